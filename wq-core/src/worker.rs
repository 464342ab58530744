//! Worker threads: the loop every worker runs, and what a worker is doing.
//!
//! The loop follows the kernel's `worker_thread()`: wake, check
//! `need_more_worker`, become running, process items while `keep_working`,
//! go idle. A worker's flags say why it does not count in its pool's
//! `nr_running`; see `pool/README.md`.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, MutexGuard, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::pool::{complete_entry, Done, Entry, Job, Outcome, Pool, PoolInner, PwqLink};
use crate::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use crate::sys;
use crate::work::{Claim, Parked, WorkShared};
use crate::Flags;

/// Idle: parked on the idle list or deciding whether to run.
pub(crate) const IDLE: u32 = 1 << 0;
/// Running an item of a `CPU_INTENSIVE` queue, or one the hog check caught.
pub(crate) const CPU_INTENSIVE: u32 = 1 << 1;
/// Inside `wq_core::blocking`.
pub(crate) const BLOCKING: u32 = 1 << 2;
/// The sleep detector saw the thread sleep.
pub(crate) const SLEEPING: u32 = 1 << 3;
/// A worker with any of these flags does not count in `nr_running`.
pub(crate) const NOT_RUNNING: u32 = IDLE | CPU_INTENSIVE | BLOCKING | SLEEPING;

/// What other threads may know of a worker.
pub(crate) struct WorkerShared {
    pub(crate) name: String,
    /// `NOT_RUNNING` bits and friends. Any thread may set or clear bits,
    /// but only through `set_flags`/`clr_flags`, which keep `nr_running`
    /// in step with the "has no NOT_RUNNING bit" predicate.
    flags: AtomicU32,
    /// Set by whoever took the worker off the idle list to wake it.
    woken: AtomicBool,
    thread: OnceLock<Thread>,
    pub(crate) tid: AtomicI32,
    /// Items started by this worker; the monitor uses it to tell items apart.
    pub(crate) items_started: AtomicU64,
}

impl WorkerShared {
    pub(crate) fn new(name: String) -> WorkerShared {
        WorkerShared {
            name,
            flags: AtomicU32::new(IDLE),
            woken: AtomicBool::new(false),
            thread: OnceLock::new(),
            tid: AtomicI32::new(0),
            items_started: AtomicU64::new(0),
        }
    }

    pub(crate) fn flags(&self) -> u32 {
        self.flags.load(SeqCst)
    }

    /// Sets `f`; returns true if the worker just stopped counting as
    /// running (`nr_running` was decremented: the caller should kick).
    pub(crate) fn set_flags(&self, pool: &Pool, f: u32) -> bool {
        let old = self.flags.fetch_or(f, SeqCst);
        if old & NOT_RUNNING == 0 && f & NOT_RUNNING != 0 {
            let prev = pool.nr_running.fetch_sub(1, SeqCst);
            debug_assert!(prev > 0, "nr_running underflow in pool {}", pool.id);
            return true;
        }
        false
    }

    /// Clears `f`; returns true if the worker counts as running again.
    pub(crate) fn clr_flags(&self, pool: &Pool, f: u32) -> bool {
        let old = self.flags.fetch_and(!f, SeqCst);
        if old & NOT_RUNNING != 0 && old & !f & NOT_RUNNING == 0 {
            pool.nr_running.fetch_add(1, SeqCst);
            return true;
        }
        false
    }

    pub(crate) fn mark_woken(&self) {
        self.woken.store(true, SeqCst);
    }

    pub(crate) fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// What the current thread is running, for deadlock checks and stats.
pub(crate) struct Current {
    pub(crate) link: Arc<PwqLink>,
    pub(crate) work_id: Option<u64>,
}

thread_local! {
    static WORKER: RefCell<Option<(Arc<Pool>, Arc<WorkerShared>)>> = const { RefCell::new(None) };
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
    static BLOCKING_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Whether the calling thread is a worker thread of some runtime.
pub fn is_worker_thread() -> bool {
    WORKER.with(|w| w.borrow().is_some())
}

/// Id of the workqueue whose item the calling thread runs, if any.
pub(crate) fn current_wq_id() -> Option<u64> {
    CURRENT.with(|c| c.borrow().as_ref().map(|c| c.link.wq.id))
}

/// Id of the work item the calling thread runs, if any.
pub(crate) fn current_work_id() -> Option<u64> {
    CURRENT.with(|c| c.borrow().as_ref().and_then(|c| c.work_id))
}

/// Runs `f`, telling the runtime that the calling worker sleeps meanwhile.
///
/// This is the explicit form of the kernel's `wq_worker_sleeping()`: while
/// `f` runs, the worker does not count as running, so if work is pending on
/// its pool another worker starts. Wrap calls that block (I/O, locks,
/// `sleep`, waiting on channels) in it. Nested calls count once; on a
/// thread that is not running a work item it simply runs `f`.
///
/// ```
/// let wq = wq_core::Workqueue::builder("io").build().unwrap();
/// let done = wq
///     .submit(|| wq_core::blocking(|| std::thread::sleep(std::time::Duration::from_millis(5))))
///     .unwrap();
/// done.wait().unwrap();
/// ```
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    let _guard = BlockingGuard::enter();
    f()
}

struct BlockingGuard(Option<(Arc<Pool>, Arc<WorkerShared>)>);

impl BlockingGuard {
    fn enter() -> BlockingGuard {
        let depth = BLOCKING_DEPTH.with(|d| d.replace(d.get() + 1));
        if depth > 0 || current_wq_id().is_none() {
            return BlockingGuard(None);
        }
        let Some((pool, me)) = WORKER.with(|w| w.borrow().clone()) else {
            return BlockingGuard(None);
        };
        if me.set_flags(&pool, BLOCKING) && pool.worker_stopped_running() {
            CURRENT.with(|c| {
                if let Some(c) = c.borrow().as_ref() {
                    c.link.wq.counters.cm_wakeups.fetch_add(1, Relaxed);
                }
            });
        }
        BlockingGuard(Some((pool, me)))
    }
}

impl Drop for BlockingGuard {
    fn drop(&mut self) {
        BLOCKING_DEPTH.with(|d| d.set(d.get() - 1));
        if let Some((pool, me)) = self.0.take() {
            me.clr_flags(&pool, BLOCKING);
        }
    }
}

/// Sets up the calling thread as `me`, a worker of `pool`.
fn attach(pool: &Arc<Pool>, me: &Arc<WorkerShared>) {
    let _ = me.thread.set(thread::current());
    me.tid.store(sys::gettid(), SeqCst);
    if let Err(err) = sys::set_current_affinity(&pool.attrs.cpus) {
        tracing::warn!(target: "wq", worker = %me.name, %err, "could not set worker CPU affinity");
    }
    if pool.attrs.nice != 0 && pool.nice_status().is_none() {
        pool.record_nice(ask_for_nice(pool.attrs.nice));
    } else if pool.attrs.nice != 0 {
        let _ = ask_for_nice(pool.attrs.nice);
    }
    WORKER.with(|w| *w.borrow_mut() = Some((pool.clone(), me.clone())));
}

/// Asks for `nice`, then for milder values; returns what was granted.
fn ask_for_nice(nice: i32) -> Option<i32> {
    let mut want = nice;
    while want < 0 {
        if sys::set_current_nice(want).is_ok() {
            return Some(want);
        }
        want /= 2;
    }
    tracing::info!(target: "wq", "the OS refused a higher priority for a highpri worker");
    None
}

/// The worker thread's body.
pub(crate) fn run(pool: Arc<Pool>, me: Arc<WorkerShared>) {
    attach(&pool, &me);
    let mut done: Vec<Done> = Vec::new();
    let mut inner = pool.lock();
    inner.nr_starting -= 1;
    loop {
        // Just created or woken: is there anything for this worker to do?
        if inner.dying && inner.worklist.is_empty() {
            break;
        }
        if !inner.dying && !pool.need_more_worker(&inner) {
            match idle_wait(&pool, &me, inner) {
                Some(guard) => {
                    inner = guard;
                    continue;
                }
                None => return,
            }
        }
        // Taking the last idle worker: ask for a new reserve so the next
        // wake never waits for thread creation.
        if inner.idle.is_empty() {
            pool.request_worker(&mut inner);
        }
        me.clr_flags(&pool, IDLE);
        loop {
            let Some(entry) = inner.worklist.pop_front() else { break };
            drop(inner);
            process_one(&pool, &me, entry, &mut done);
            inner = pool.lock();
            inner = complete_local(&pool, inner, &mut done);
            if !pool.keep_working(&inner) {
                break;
            }
        }
        me.set_flags(&pool, IDLE);
    }
    inner.workers.retain(|w| !Arc::ptr_eq(w, &me));
    drop(inner);
    pool.rt.nr_workers.fetch_sub(1, SeqCst);
}

/// Applies the accounting of this pool's finished entries.
fn complete_local<'a>(
    pool: &'a Arc<Pool>,
    mut inner: MutexGuard<'a, PoolInner>,
    done: &mut Vec<Done>,
) -> MutexGuard<'a, PoolInner> {
    let mut retired = Vec::new();
    for d in done.drain(..) {
        if pool.complete(&mut inner, &d) {
            retired.push(d.link.wq.clone());
        }
    }
    if retired.is_empty() {
        return inner;
    }
    // Flushers hold their flush lock while taking pool locks, so they are
    // notified with the pool unlocked.
    drop(inner);
    for wq in retired {
        wq.notify_flushers();
    }
    pool.lock()
}

/// Parks `me` on the idle list until woken, or reaps it after the idle
/// timeout if another idle worker stays in reserve. Returns `None` if the
/// worker was reaped and must exit.
fn idle_wait<'a>(
    pool: &'a Arc<Pool>,
    me: &Arc<WorkerShared>,
    mut inner: MutexGuard<'a, PoolInner>,
) -> Option<MutexGuard<'a, PoolInner>> {
    me.woken.store(false, SeqCst);
    inner.idle.push(me.clone());
    let timeout = pool.rt.config.idle_timeout;
    let mut deadline = Instant::now() + timeout;
    loop {
        drop(inner);
        thread::park_timeout(deadline.saturating_duration_since(Instant::now()));
        inner = pool.lock();
        if me.woken.swap(false, SeqCst) {
            inner.nr_waking -= 1;
            return Some(inner);
        }
        if Instant::now() >= deadline {
            if inner.idle.len() > 1 {
                inner.idle.retain(|w| !Arc::ptr_eq(w, me));
                inner.workers.retain(|w| !Arc::ptr_eq(w, me));
                drop(inner);
                pool.rt.nr_workers.fetch_sub(1, SeqCst);
                tracing::debug!(target: "wq", worker = %me.name, "idle worker reaped");
                return None;
            }
            deadline = Instant::now() + timeout;
        }
    }
}

/// Runs one dequeued entry. Accounting for entries of this pool is pushed
/// to `done`; entries of other pools (hand-offs) are completed right here.
fn process_one(pool: &Arc<Pool>, me: &WorkerShared, entry: Entry, done: &mut Vec<Done>) {
    let Entry { pwq: link, color, job } = entry;
    match job {
        Job::Once(f) => {
            let (link, outcome, cpu_time) = execute(pool, me, link, None, f);
            finish_entry(pool, Done { link, color, outcome, cpu_time }, done);
        }
        Job::Work { work, gen } => run_work(pool, me, work, Parked { link, color, gen }, done),
    }
}

/// Claims and runs a work item instance, then any instance handed to this
/// worker while it ran (see `work/README.md`).
fn run_work(pool: &Arc<Pool>, me: &WorkerShared, work: Arc<WorkShared>, mut inst: Parked, done: &mut Vec<Done>) {
    loop {
        match work.state.claim(inst.gen) {
            Claim::Run => break,
            Claim::Stale => return finish_entry(pool, inst.discarded(), done),
            Claim::Busy => {
                let mut slot = work.lock_parked();
                if work.state.try_set_handoff() {
                    slot.push(inst);
                    return;
                }
            }
        }
    }
    loop {
        let Parked { link, color, gen } = inst;
        let (link, outcome, cpu_time) = execute(pool, me, link, Some(work.id), || {
            Outcome::of(catch_unwind(AssertUnwindSafe(|| work.call())).is_err())
        });
        work.retire(gen);
        finish_entry(pool, Done { link, color, outcome, cpu_time }, done);
        match take_next_instance(pool, &work, done) {
            Some(next) => inst = next,
            None => return,
        }
    }
}

/// Ends one execution: clears `RUNNING`, unless instances were parked for
/// this worker, in which case the live one is returned to run next.
fn take_next_instance(pool: &Arc<Pool>, work: &WorkShared, done: &mut Vec<Done>) -> Option<Parked> {
    loop {
        match work.state.try_finish() {
            Ok(prev) => {
                if prev & crate::work::WAITERS != 0 {
                    work.notify_waiters();
                }
                return None;
            }
            Err(_) => {
                let parked = {
                    let mut slot = work.lock_parked();
                    work.state.clear_handoff();
                    std::mem::take(&mut *slot)
                };
                let mut next = None;
                for p in parked {
                    if next.is_none() && work.state.claim_parked(p.gen) {
                        next = Some(p);
                    } else {
                        finish_entry(pool, p.discarded(), done);
                    }
                }
                if next.is_some() {
                    return next;
                }
            }
        }
    }
}

/// Queues `d` for the local completion pass, or completes it now if the
/// entry belongs to another pool.
fn finish_entry(pool: &Arc<Pool>, d: Done, done: &mut Vec<Done>) {
    if Arc::ptr_eq(&d.link.pool, pool) {
        done.push(d);
    } else {
        complete_entry(d);
    }
}

/// Runs user code for one entry with the bookkeeping around it: the
/// current-item context, CPU-intensive accounting, CPU time.
fn execute(
    pool: &Arc<Pool>,
    me: &WorkerShared,
    link: Arc<PwqLink>,
    work_id: Option<u64>,
    f: impl FnOnce() -> Outcome,
) -> (Arc<PwqLink>, Outcome, Duration) {
    let intensive = link.wq.flags.contains(Flags::CPU_INTENSIVE);
    let wq_id = link.wq.id;
    CURRENT.with(|c| *c.borrow_mut() = Some(Current { link, work_id }));
    // A worker that does not count as running must chain the pending work
    // to another worker itself (the kernel's kick in process_one_work).
    if intensive && me.set_flags(pool, CPU_INTENSIVE) {
        pool.worker_stopped_running();
    }
    me.items_started.fetch_add(1, SeqCst);
    tracing::trace!(target: "wq", wq = wq_id, worker = %me.name, "execute_start");
    let start = sys::thread_cpu_time();
    let outcome = f();
    let cpu_time = sys::thread_cpu_time().saturating_sub(start);
    tracing::trace!(target: "wq", wq = wq_id, worker = %me.name, "execute_end");
    me.clr_flags(pool, CPU_INTENSIVE);
    let current = CURRENT.with(|c| c.borrow_mut().take()).expect("current item vanished");
    (current.link, outcome, cpu_time)
}
