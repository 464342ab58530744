//! `Detector::Auto` arms a worker's perf event only once the monitor has
//! polled it a few times while its pool had work pending, and closes every
//! event after the runtime has been idle a while (`detect/on_demand.rs`).
//! Counted from this process's perf fds, so alone in its test binary.

use std::time::{Duration, Instant};

use wq_core::{Detector, Flags, Runtime};

fn perf_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("perf_event")))
        .count()
}

#[test]
fn perf_events_are_armed_under_load_and_closed_when_idle() {
    let rt = Runtime::builder().build().unwrap();
    let (kind, reason) = rt.detector();
    if kind != Detector::Perf {
        eprintln!("skipped: Auto resolved to {kind} here ({reason})");
        return;
    }
    assert!(reason.contains("armed per worker under load"), "{reason}");
    let wq = rt.workqueue("sleepy").flags(Flags::UNBOUND).build().unwrap();
    for _ in 0..4 {
        wq.submit(|| ()).unwrap().wait().unwrap();
    }
    assert_eq!(perf_fds(), 0, "idle workers woken for one item each carry no perf event");

    // Sleeping items, many more than the pool runs at once: work stays
    // pending, so the monitor polls the busy workers, and arms them.
    let items: Vec<_> = (0..60).map(|_| wq.submit(|| std::thread::sleep(Duration::from_millis(20))).unwrap()).collect();
    let mut most = 0;
    while most == 0 && items.iter().any(|c| !c.is_finished()) {
        most = most.max(perf_fds());
        std::thread::sleep(Duration::from_millis(1));
    }
    for item in items {
        item.wait().unwrap();
    }
    assert!(most > 0, "no perf event was armed while work was pending");

    let deadline = Instant::now() + Duration::from_secs(30);
    while perf_fds() > 0 {
        assert!(Instant::now() < deadline, "{} perf events still open 30 s after the load", perf_fds());
        std::thread::sleep(Duration::from_millis(5));
    }
}
