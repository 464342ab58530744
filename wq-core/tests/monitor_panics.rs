//! A panic on the monitor's thread: the monitor starts over, says so, and
//! the runtime keeps creating workers and seeing sleeps.
//!
//! User code runs on that thread: `tracing` subscribers (the runtime logs a
//! failed worker creation there), the spawn hook, periodic jobs. This test
//! installs a process-wide subscriber that panics once, on the monitor's
//! thread, so it has a binary of its own.

mod common;

use std::io;
use std::panic;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{wait_until, OnEvent};
use wq_core::Runtime;

/// How long any single wait may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(10);

/// Armed until the first "worker creation failed" event logged on the
/// monitor's thread, where the subscriber panics.
static ARMED: AtomicBool = AtomicBool::new(true);

fn panic_once_on_creation_failure(message: &str) {
    if message.contains("worker creation failed") && ARMED.swap(false, SeqCst) {
        panic!("injected: the subscriber panicked on the monitor's thread");
    }
}

#[test]
fn a_panic_on_the_monitors_thread_is_counted_and_the_runtime_goes_on() {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !info.payload().downcast_ref::<&str>().is_some_and(|m| m.contains("injected")) {
            default_hook(info);
        }
    }));
    let subscriber = OnEvent { on_thread: |name| name == "wq/monitor", on_event: panic_once_on_creation_failure };
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // The first creation fails: the monitor logs it, and the subscriber
    // panics while the pool's request is only on the monitor's stack.
    let fail = Arc::new(AtomicBool::new(true));
    let f = fail.clone();
    let rt = Runtime::builder()
        .cpus([0])
        .spawn_hook(move || match f.load(SeqCst) {
            true => Err(io::Error::other("injected: no thread yet")),
            false => Ok(()),
        })
        .build()
        .unwrap();
    let wq = rt.workqueue("after-the-panic").build().unwrap();
    let first = wq.submit(|| "ran").unwrap();
    wait_until("the monitor's panic is counted", || rt.stats().monitor_panics == 1);
    assert!(rt.dump().contains("Monitor: panicked 1 times"), "{}", rt.dump());
    fail.store(false, SeqCst);

    // The lost request was asked again: the item gets its worker.
    assert!(first.wait_timeout(PATIENCE), "the item whose worker request died with the monitor never ran");
    assert_eq!(first.wait().unwrap(), "ran");

    // The restarted monitor still sees an unannounced sleep: the item
    // queued behind a sleeper on the one-CPU pool runs while it sleeps.
    let woke = Arc::new(AtomicBool::new(false));
    let w = woke.clone();
    let sleeper = wq
        .submit(move || {
            thread::sleep(Duration::from_millis(300));
            w.store(true, SeqCst);
        })
        .unwrap();
    let w = woke.clone();
    let behind = wq.submit(move || w.load(SeqCst)).unwrap();
    assert!(behind.wait_timeout(PATIENCE));
    assert!(!behind.wait().unwrap(), "the item behind the sleeper waited for it: no monitor saw the sleep");
    assert!(sleeper.wait_timeout(PATIENCE));
    assert_eq!(rt.stats().monitor_panics, 1, "the monitor panicked again");
}
