//! A dropped runtime stops all of its threads (alone in its test binary,
//! so no other runtime's threads are counted).

mod common;

use std::time::Duration;

fn wq_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|n| n.starts_with("wq/"))
        .count()
}

#[test]
fn dropping_the_last_handle_stops_every_thread_of_the_runtime() {
    assert_eq!(wq_threads(), 0);
    let rt = wq_core::Runtime::builder().idle_timeout(Duration::from_secs(600)).build().unwrap();
    let wq = rt.workqueue("bye").build().unwrap();
    let dw = wq_core::DelayedWork::new(|| {});
    assert!(wq.queue_delayed(&dw, Duration::from_millis(30)));
    for _ in 0..10 {
        let _ = wq.execute(|| wq_core::blocking(|| std::thread::sleep(Duration::from_millis(10))));
    }
    // Threads name themselves once they run.
    let started = 2 * rt.cpus().len() + 2;
    common::wait_until("the runtime's threads are up", || wq_threads() >= started);
    drop((rt, wq));
    // Armed delayed work keeps the runtime alive until it fired.
    common::wait_until("every wq thread exited", || wq_threads() == 0);
    assert!(!dw.is_pending());
}
