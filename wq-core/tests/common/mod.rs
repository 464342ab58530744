//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use wq_core::{Runtime, Workqueue};

/// The time unit of timeline tests: long enough to dominate scheduling noise.
pub const UNIT: Duration = Duration::from_millis(20);

/// Burns `d` of the calling thread's CPU time (not wall time, so a
/// preempted burn cannot finish early).
pub fn burn(d: Duration) {
    let start = thread_cpu();
    while thread_cpu() - start < d {
        std::hint::spin_loop();
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A log of `(item, event, time)` records.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<(String, &'static str, Instant)>>>);

impl Events {
    pub fn record(&self, item: &str, what: &'static str) {
        self.0.lock().unwrap().push((item.to_owned(), what, Instant::now()));
    }

    /// When `item` recorded `what` (panics with the whole log if it did not).
    pub fn at(&self, item: &str, what: &str) -> Instant {
        let log = self.0.lock().unwrap();
        log.iter()
            .find(|(i, w, _)| i == item && *w == what)
            .map(|e| e.2)
            .unwrap_or_else(|| panic!("no {what:?} event for {item:?} in {:?}", self.render_locked(&log)))
    }

    pub fn render(&self) -> String {
        let log = self.0.lock().unwrap();
        self.render_locked(&log)
    }

    fn render_locked(&self, log: &[(String, &'static str, Instant)]) -> String {
        let t0 = log.first().map(|e| e.2);
        log.iter()
            .map(|(i, w, t)| format!("{:>6.1} ms {i} {w}", (*t - t0.unwrap()).as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// How a timeline item sleeps.
#[derive(Clone, Copy, Debug)]
pub enum SleepKind {
    /// Inside `wq_core::blocking`.
    Hooked,
    /// A plain `std::thread::sleep`: only automatic detection sees it.
    Plain,
}

fn sleep(kind: SleepKind, d: Duration) {
    match kind {
        SleepKind::Hooked => wq_core::blocking(|| thread::sleep(d)),
        SleepKind::Plain => thread::sleep(d),
    }
}

/// The seed's w0/w1/w2 scenario (`workqueue.rst`, "Example Execution
/// Scenarios") in units of [`UNIT`]: w0 burns 1, sleeps 2, burns 1; w1 and
/// w2 burn 1 and sleep 2. w0 goes to `q0`, w1 and w2 to `q1`.
pub fn seed_timeline(q0: &Workqueue, q1: &Workqueue, kind: SleepKind) -> Events {
    let events = Events::default();
    let mut done = Vec::new();
    for (name, q, second_burn) in [("w0", q0, true), ("w1", q1, false), ("w2", q1, false)] {
        let ev = events.clone();
        done.push(
            q.submit(move || {
                ev.record(name, "start");
                burn(UNIT);
                ev.record(name, "sleep");
                sleep(kind, 2 * UNIT);
                ev.record(name, "wake");
                if second_burn {
                    burn(UNIT);
                }
                ev.record(name, "end");
            })
            .unwrap(),
        );
    }
    for d in done {
        d.wait().unwrap();
    }
    events
}

/// A runtime on CPU 0 only, as the seed's scenarios assume.
pub fn one_cpu_runtime() -> Runtime {
    Runtime::builder().cpus([0]).build().unwrap()
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Drives a future to completion on the calling thread.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// Polls `cond` until it holds; fails after a generous 20 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(2));
    }
}
