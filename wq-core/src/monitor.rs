//! The monitor: userspace's stand-in for the kernel's scheduler hooks.
//!
//! The kernel learns from the scheduler that a worker went to sleep
//! (`wq_worker_sleeping`) or woke (`wq_worker_running`), and from the
//! scheduler tick that an item hogs the CPU (`wq_cpu_intensive_thresh_us`).
//! Here one thread per runtime polls each busy worker's probe (perf
//! context-switch records, or `/proc` task state) and its CPU clock.
//!
//! It only ticks while some pool has pending work: a worker that sleeps
//! while nothing waits costs nothing, and the explicit hook
//! (`wq_core::blocking`) covers the zero-latency case. Parking protocol:
//! the monitor sets `parked`, then re-checks every pool's `nr_pending`;
//! a queuer raises `nr_pending`, then checks `parked` (both SeqCst). One of
//! the two always sees the other, so pending work never waits on a parked
//! monitor.

use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::detect::ThreadState;
use crate::pool::Pool;
use crate::worker::{WorkerShared, BLOCKING, CPU_INTENSIVE, IDLE, IGNORE_SLEEPS, SLEEPING};
use crate::{sys, Error};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};

/// How often busy workers are polled while work is pending.
const TICK: Duration = Duration::from_micros(50);
/// How long the monitor keeps ticking after the last pending work.
const LINGER: Duration = Duration::from_millis(2);
/// A sleep shorter than this is not acted on: waking a worker for it
/// would only make that worker go idle again (XNU uses ~200 µs).
pub(crate) const SLEEP_HYSTERESIS: Duration = Duration::from_micros(100);

pub(crate) struct Monitor {
    parked: AtomicBool,
    thread: OnceLock<Thread>,
    shutdown: AtomicBool,
}

impl Monitor {
    pub(crate) fn new() -> Arc<Monitor> {
        Arc::new(Monitor { parked: AtomicBool::new(false), thread: OnceLock::new(), shutdown: AtomicBool::new(false) })
    }

    /// Work became pending on some pool (its `nr_pending` was raised first).
    pub(crate) fn poke(&self) {
        if self.parked.load(SeqCst) && self.parked.swap(false, SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    pub(crate) fn shut_down(&self) {
        self.shutdown.store(true, SeqCst);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    pub(crate) fn start(self: &Arc<Self>, pools: Vec<Arc<Pool>>, hog_threshold: Duration) -> Result<(), Error> {
        let me = self.clone();
        thread::Builder::new()
            .name("wq/monitor".into())
            .spawn(move || me.run(&pools, hog_threshold))
            .map(drop)
            .map_err(Error::Spawn)
    }

    fn run(&self, pools: &[Arc<Pool>], hog_threshold: Duration) {
        let _ = self.thread.set(thread::current());
        // A 50 µs sleep lasts 50 µs only with a fine timer slack.
        sys::set_current_timer_slack(1);
        let mut busy: Vec<Arc<WorkerShared>> = Vec::new();
        let mut last_pending = Instant::now();
        while !self.shutdown.load(SeqCst) {
            let mut any_pending = false;
            for pool in pools {
                if pool.nr_pending.load(SeqCst) == 0 {
                    continue;
                }
                any_pending = true;
                busy.clear();
                busy.extend(pool.lock().workers.iter().filter(|w| w.flags() & IDLE == 0).cloned());
                for w in &busy {
                    check_worker(pool, w, hog_threshold);
                }
            }
            let now = Instant::now();
            if any_pending {
                last_pending = now;
            } else if now - last_pending >= LINGER && self.park(pools) {
                last_pending = Instant::now();
                continue;
            }
            thread::park_timeout(TICK);
        }
    }

    /// Parks until poked. Returns after re-checking that nothing is pending.
    fn park(&self, pools: &[Arc<Pool>]) -> bool {
        self.parked.store(true, SeqCst);
        if pools.iter().any(|p| p.nr_pending.load(SeqCst) > 0) {
            self.parked.store(false, SeqCst);
            return false;
        }
        while self.parked.load(SeqCst) && !self.shutdown.load(SeqCst) {
            thread::park();
        }
        true
    }
}

/// One busy worker of a pool with pending work: did it sleep, wake, or
/// run past the CPU-hog threshold?
fn check_worker(pool: &Arc<Pool>, w: &WorkerShared, hog_threshold: Duration) {
    let flags = w.flags();
    let state = match w.probe.lock() {
        Ok(mut probe) => probe.as_mut().map_or(ThreadState::Unknown, |p| p.poll()),
        Err(_) => ThreadState::Unknown,
    };
    match state {
        ThreadState::Sleeping { since } if flags & (SLEEPING | IGNORE_SLEEPS) == 0 => {
            // The kernel's wq_worker_sleeping(): stop counting it, kick the pool.
            let long_enough = since.elapsed() >= SLEEP_HYSTERESIS;
            if long_enough && w.set_flags(pool, SLEEPING) && pool.worker_stopped_running() {
                w.cm_wakeups.fetch_add(1, Relaxed);
            }
        }
        ThreadState::Running if flags & SLEEPING != 0 => {
            // The kernel's wq_worker_running().
            w.clr_flags(pool, SLEEPING);
        }
        _ => {}
    }
    // Hogging means running past the threshold without sleeping: a sleep
    // seen by either hook restarts the count.
    let slept = flags & (SLEEPING | BLOCKING) != 0 || matches!(state, ThreadState::Sleeping { .. });
    let (item, used) = w.cpu_time_since_base(slept);
    if flags & CPU_INTENSIVE == 0 && used >= hog_threshold && w.items_started.load(SeqCst) == item {
        w.hog_marked.store(true, Relaxed);
        if w.set_flags(pool, CPU_INTENSIVE) {
            pool.worker_stopped_running();
        }
    }
}
