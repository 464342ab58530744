//! criterion micro-benchmarks of wq-core's hot paths, for before/after comparisons of a change:
//! `cargo bench -p benches --bench hot_paths` (add `-- --save-baseline before`, then
//! `-- --baseline before` after the change).
//!
//! - `queue_execute_work`: `Workqueue::queue` of a prepared `Work` plus its execution, per item,
//!   with many items in flight (throughput cost).
//! - `submit_wait`: `submit` of a closure and `Completion::wait` on it (one round trip through an
//!   idle-ish pool: wake-up latency included).
//! - `ping_pong`: two `Work`s that queue each other; one hop = one queue + one execution on a
//!   worker, with no submitting thread involved.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use wq_core::{Runtime, Work, Workqueue};

/// Works reused round-robin by `queue_execute_work`; enough that one is almost never still
/// pending when its turn comes again.
const RING: usize = 4096;

fn runtime_and_queue(name: &str) -> (Runtime, Workqueue) {
    let rt = Runtime::builder().build().expect("building the runtime");
    let wq = rt.workqueue(name).build().expect("building the workqueue");
    (rt, wq)
}

/// Blocks the bench thread until `target` is reached without spinning on a CPU the workers need.
struct Counter {
    n: AtomicU64,
    target: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Counter {
    const fn new() -> Counter {
        Counter { n: AtomicU64::new(0), target: AtomicU64::new(u64::MAX), lock: Mutex::new(()), cv: Condvar::new() }
    }

    fn arm(&self, target: u64) {
        self.n.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
    }

    fn bump(&self) {
        if self.n.fetch_add(1, Ordering::AcqRel) + 1 == self.target.load(Ordering::Acquire) {
            // Taking the lock orders this notify after the waiter's check, so it cannot be lost.
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }

    fn wait(&self) {
        let target = self.target.load(Ordering::Acquire);
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.n.load(Ordering::Acquire) < target {
            g = self.cv.wait_timeout(g, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

static QUEUED: Counter = Counter::new();

fn queue_execute_work(c: &mut Criterion) {
    let (_rt, wq) = runtime_and_queue("bench-queue");
    let works: Vec<Work> = (0..RING).map(|_| Work::new(|| QUEUED.bump())).collect();
    c.bench_function("queue_execute_work", |b| {
        b.iter_custom(|iters| {
            QUEUED.arm(iters);
            let start = Instant::now();
            for i in 0..iters as usize {
                let w = &works[i % RING];
                // Still pending from the previous lap: wait for it rather than lose an execution.
                while !wq.queue(w) {
                    std::thread::yield_now();
                }
            }
            QUEUED.wait();
            start.elapsed()
        })
    });
}

fn submit_wait(c: &mut Criterion) {
    let (_rt, wq) = runtime_and_queue("bench-submit");
    c.bench_function("submit_wait", |b| {
        b.iter(|| wq.submit(|| black_box(1u64)).expect("submit").wait().expect("no panic"))
    });
}

/// The two works of the ping-pong refer to each other through this static: a closure cannot
/// capture a Work that does not exist yet, and a static avoids an Arc cycle.
struct PingPong {
    wq: Workqueue,
    works: [Work; 2],
    hops: Counter,
}

static PING_PONG: OnceLock<PingPong> = OnceLock::new();

fn hop(next: usize) {
    if let Some(pp) = PING_PONG.get() {
        pp.hops.bump();
        if pp.hops.n.load(Ordering::Acquire) < pp.hops.target.load(Ordering::Acquire) {
            pp.wq.queue(&pp.works[next]);
        }
    }
}

fn ping_pong(c: &mut Criterion) {
    let (_rt, wq) = runtime_and_queue("bench-ping-pong");
    let pp = PING_PONG.get_or_init(|| PingPong {
        wq,
        works: [Work::new(|| hop(1)), Work::new(|| hop(0))],
        hops: Counter::new(),
    });
    c.bench_function("ping_pong_hop", |b| {
        b.iter_custom(|iters| {
            pp.hops.arm(iters);
            let start = Instant::now();
            pp.wq.queue(&pp.works[0]);
            pp.hops.wait();
            let elapsed = start.elapsed();
            // The last hop may still be returning from `queue`; let both works go idle so the
            // next sample's first `queue` is not refused as already pending.
            while pp.works.iter().any(|w| w.is_pending() || w.is_running()) {
                std::thread::yield_now();
            }
            elapsed
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = queue_execute_work, submit_wait, ping_pong
}
criterion_main!(hot_paths);
