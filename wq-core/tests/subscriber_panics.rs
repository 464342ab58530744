//! A `tracing` subscriber that panics on a worker thread: on `queue_work`,
//! which the pool emits with its lock held, and on `execute_start`, which a
//! worker emits around an item, outside the item's own `catch_unwind`.
//! Either panic used to kill the worker (still counted as running, the
//! entries it was admitting dropped) and stall its pool. The runtime now
//! contains it: later items run, and a worker that blocks still gets
//! another one behind it. The subscriber is process-wide, so this test has
//! a binary of its own.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::OnEvent;
use wq_core::Runtime;

/// Event names still to panic on, once each.
static ARMED: Mutex<Vec<&str>> = Mutex::new(Vec::new());
/// Panics injected so far.
static FIRED: AtomicUsize = AtomicUsize::new(0);

/// Panics once on each event named in `ARMED`, on any of the runtime's
/// threads (whoever admits the inbox: a worker, or the monitor).
fn panic_once_per_armed_name(message: &str) {
    let hit = {
        let mut armed = ARMED.lock().unwrap();
        armed.iter().position(|&name| name == message).map(|at| armed.remove(at))
    };
    if let Some(name) = hit {
        FIRED.fetch_add(1, SeqCst);
        panic!("injected: subscriber panic on {name}");
    }
}

fn spin(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

#[test]
fn a_subscriber_panic_on_a_worker_stalls_nothing() {
    ARMED.lock().unwrap().extend(["queue_work", "execute_start"]);
    let subscriber = OnEvent { on_thread: |name| name.starts_with("wq/"), on_event: panic_once_per_armed_name };
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info.payload().downcast_ref::<String>().is_some_and(|m| m.starts_with("injected:"));
        if !injected {
            default_hook(info);
        }
    }));
    let rt = Runtime::builder().cpus([0]).publish(false).build().unwrap();
    let wq = rt.workqueue("q").build().unwrap();
    // `a` runs on a worker; `b` waits in the inbox behind it and is admitted
    // by that worker when `a` ends, under the pool lock: `queue_work` fires
    // there. `execute_start` fires as the worker starts `a`.
    let (tx, rx) = std::sync::mpsc::channel();
    let a = wq
        .submit(move || {
            tx.send(()).unwrap();
            spin(common::UNIT);
        })
        .unwrap();
    rx.recv_timeout(Duration::from_secs(10)).expect("a never started");
    let b = wq.submit(|| "b").unwrap();
    assert!(a.wait_timeout(Duration::from_secs(10)), "a never ended");
    assert!(b.wait_timeout(Duration::from_secs(10)), "b, admitted as the subscriber panicked, never ran");
    assert_eq!(FIRED.load(SeqCst), 2, "both panics were injected");
    // The pool still manages concurrency: an item behind one that blocks
    // (announced) starts on another worker before that one ends.
    for round in 0..3 {
        let (tx, rx) = std::sync::mpsc::channel();
        let s = wq
            .submit(move || {
                tx.send(()).unwrap();
                wq_core::blocking(|| thread::sleep(common::UNIT * 10));
                Instant::now()
            })
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10)).expect("the blocking item never started");
        let t = wq.submit(Instant::now).unwrap();
        assert!(t.wait_timeout(Duration::from_secs(10)), "round {round}: the item behind never ran");
        assert!(t.wait().unwrap() < s.wait().unwrap(), "round {round}: the item behind waited for the blocked one");
    }
}
