//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
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

/// One recorded event: which item, what happened, when.
type Event = (String, &'static str, Instant);

/// A log of events.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Event>>>);

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

    fn render_locked(&self, log: &[Event]) -> String {
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

/// Timing-sensitive tests (timelines pin their workers to CPU 0; others load
/// every CPU) would distort each other, so every test of their binaries
/// takes this first (tests in a binary run in parallel).
static CPU0: Mutex<()> = Mutex::new(());

/// Holds CPU 0 for one timing-sensitive test.
pub fn cpu0() -> std::sync::MutexGuard<'static, ()> {
    CPU0.lock().unwrap_or_else(|e| e.into_inner())
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

/// Runs the max_active >= 3 scenario until one run is not distorted by
/// machine load: the seed assumes w0 still sleeps when w1 goes to sleep (if
/// w0 already runs again, cmwq rightly does not start w2). Gives up after
/// ten distorted runs.
pub fn undistorted_max_active_3(mut run: impl FnMut() -> Events) -> Events {
    for _ in 0..10 {
        let ev = run();
        let (w0_sleep, w0_wake, w1_sleep) = (ev.at("w0", "sleep"), ev.at("w0", "wake"), ev.at("w1", "sleep"));
        if w0_sleep <= w1_sleep && w1_sleep < w0_wake {
            return ev;
        }
        eprintln!("load distorted the timeline, running it again:\n{}", ev.render());
    }
    panic!("ten runs in a row were distorted by machine load");
}

/// A runtime on CPU 0 only, as the seed's scenarios assume, whose CPU-hog
/// threshold is well above the scenario's burns (as the seed's 5 ms burns
/// are below the kernel's 10 ms threshold).
pub fn one_cpu_runtime() -> Runtime {
    warmed_up(Runtime::builder().cpus([0]).cpu_hog_threshold(20 * UNIT).build().unwrap())
}

/// Makes CPU 0's normal pool start four workers (they then idle for the
/// 300 s idle timeout), so a timeline measures wake-ups, not thread
/// creation on a loaded machine — the seed's scenarios ignore it too.
pub fn warmed_up(rt: Runtime) -> Runtime {
    let wq = rt.workqueue("warm-up").build().unwrap();
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let all: Vec<_> = (0..4)
        .map(|_| {
            let started = started.clone();
            wq.submit(move || {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                wq_core::blocking(|| {
                    wait_until("4 warm-up items run at once", || started.load(std::sync::atomic::Ordering::SeqCst) == 4)
                });
            })
            .unwrap()
        })
        .collect();
    for c in all {
        c.wait().unwrap();
    }
    // wait() returns when the result is out; flush also waits for the
    // workers' bookkeeping after it, so nothing of the warm-up trails on.
    wq.flush().unwrap();
    rt
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

/// The names of this process's threads (`/proc/self/task/*/comm`).
pub fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim_end().to_owned())
        .collect()
}

/// Polls `cond` until it holds; fails after a generous 20 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `round(0)`, `round(1)`, … until `max` rounds ran or `budget`
/// passed, and prints how many ran: a race test gets as many tries as the
/// machine allows in bounded time.
pub fn race_rounds(max: usize, budget: Duration, mut round: impl FnMut(usize)) {
    let start = Instant::now();
    let mut n = 0;
    while n < max && start.elapsed() < budget {
        round(n);
        n += 1;
    }
    eprintln!("{n} rounds in {:?}", start.elapsed());
}

/// Yields until `count` reaches `expected`; fails after `limit`, naming
/// `what` has not happened. For tests of thousands of short rounds:
/// yielding rather than sleeping lets a worker that shares this CPU run at
/// once, and rather than spinning keeps this thread from holding the CPU
/// for a whole slice.
pub fn wait_for_count(count: &AtomicUsize, expected: usize, limit: Duration, what: impl Fn() -> String) {
    let start = Instant::now();
    loop {
        let now = count.load(SeqCst);
        if now >= expected {
            return;
        }
        assert!(start.elapsed() < limit, "{} ({now} of {expected} after {limit:?})", what());
        thread::yield_now();
    }
}

/// The CPU the calling thread runs on, from `/proc` (no `unsafe` needed).
pub fn current_cpu() -> usize {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(36).unwrap().parse().unwrap()
}

/// A process-wide `tracing` subscriber for tests that inject a panic into
/// the runtime's logging: it hands each `wq` event's message, on a thread
/// `on_thread` accepts, to `on_event` (which may panic), and ignores the
/// rest. Install it with `tracing::subscriber::set_global_default`, in a
/// test binary of its own.
pub struct OnEvent {
    pub on_thread: fn(&str) -> bool,
    pub on_event: fn(&str),
}

/// The `message` field of an event.
#[derive(Default)]
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for OnEvent {
    fn register_callsite(&self, _: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        // Ask `enabled` every time: it depends on the calling thread.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        meta.target() == "wq" && thread::current().name().is_some_and(self.on_thread)
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut msg = Message::default();
        event.record(&mut msg);
        (self.on_event)(&msg.0);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}
