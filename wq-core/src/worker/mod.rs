//! Worker threads: the loop every worker runs, and what a worker is doing.
//!
//! The loop follows the kernel's `worker_thread()`: wake, check
//! `need_more_worker`, become running, process items while `keep_working`,
//! go idle. A worker's flags say why it does not count in its pool's
//! `nr_running`; see `pool/README.md`.

mod hooks;
mod meter;
mod slice;

pub use hooks::{blocking, ignore_sleeps, min_sleep};
pub(crate) use meter::Charge;
use meter::{CpuMeter, Start};
use slice::WakeSlice;

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::detect::{Detector, Probe};
use crate::pool::{
    complete_entry, drop_quietly, emit_quietly, Batch, Done, Entry, FollowUps, Job, Outcome, Pool, PoolInner, PwqRef,
};
use crate::sys;
use crate::trace::TraceKind;
use crate::work::{gen_reached, retired_at_finish, Claim, Parked, WorkShared};
use crate::Flags;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
    Ordering::SeqCst,
};

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
/// Inside `wq_core::ignore_sleeps`: the monitor does not mark it `SLEEPING`.
/// Not a `NOT_RUNNING` bit.
pub(crate) const IGNORE_SLEEPS: u32 = 1 << 4;

/// What other threads may know of a worker.
pub(crate) struct WorkerShared {
    pub(crate) name: String,
    /// `NOT_RUNNING` bits and friends. Any thread may set or clear bits,
    /// but only through `set_flags`/`clr_flags`, which keep `nr_running`
    /// in step with the "has no NOT_RUNNING bit" predicate.
    flags: AtomicU32,
    /// Held by `set_flags`/`clr_flags` across the flags change and the
    /// `nr_running` change it implies. Two threads change a worker's
    /// flags: the worker, and the monitor (a sleep seen, a hog marked).
    /// Without it, the monitor could mark the worker not running between
    /// the worker's "running again" flags change and its increment, and
    /// decrement first: the count would dip below the running workers
    /// (below zero in a pool with none). With it, each worker's pending
    /// increment is its own, so the count never reads below zero.
    transition: Mutex<()>,
    /// Set by whoever took the worker off the idle list to wake it.
    woken: AtomicBool,
    /// Set by the manager to have an idle worker leave now rather than at
    /// its idle timeout: the runtime's cap keeps another pool from its
    /// first worker (`reap_now`).
    reap: AtomicBool,
    thread: OnceLock<Thread>,
    pub(crate) tid: AtomicI32,
    /// Items started by this worker; the monitor uses it to tell items apart.
    pub(crate) items_started: AtomicU64,
    /// Id of the queue whose item runs now (0: none), for watchdog reports.
    pub(crate) current_wq: AtomicU64,
    /// The sleep probe, made on the worker's thread, polled by the monitor.
    pub(crate) probe: Mutex<Option<Probe>>,
    /// The worker thread's CPU-time clock, readable from the monitor.
    cpu_clock: OnceLock<libc::clockid_t>,
    /// Monitor-only: the `items_started` value it last saw, and the
    /// worker's CPU time (ns) when it saw that item start or wake up; the
    /// hog threshold counts from there.
    mon_item: AtomicU64,
    cpu_base_ns: AtomicU64,
    /// Monitor-only: the worker's CPU time and the monitor's clock (ns) at
    /// the start of the current wait window (see `cpu_time_since_base`).
    mon_cpu_ns: AtomicU64,
    mon_wall_ns: AtomicU64,
    /// The worker slept since the monitor's last CPU-clock reading: seen
    /// by the monitor, or a wait inside `ignore_sleeps` (set as it ends).
    /// Restarts the hog count, which counts CPU time "without sleeping".
    pub(crate) mon_slept: AtomicBool,
    /// The monitor marked the current item as a CPU hog.
    pub(crate) hog_marked: AtomicBool,
    /// Wake-ups the monitor caused for the current item, not yet counted
    /// in its queue's stats (the worker adds them at item end).
    pub(crate) cm_wakeups: AtomicU64,
    /// Inside `wq_core::min_sleep`: the shortest futex wait (ns) the
    /// monitor acts on; 0 means its default hysteresis.
    pub(crate) min_sleep_ns: AtomicU64,
    /// `/proc/self/task/<tid>/wchan`, kept open: where in the kernel the
    /// thread sleeps (only read for workers inside `min_sleep`).
    wchan: OnceLock<std::fs::File>,
    /// Entries taken from the worklist ahead of time, and deferred
    /// accounting (`pool/batch.rs`). Lock order: pool lock, then this.
    batch: Mutex<Batch>,
}

impl WorkerShared {
    pub(crate) fn new(name: String) -> WorkerShared {
        WorkerShared {
            name,
            flags: AtomicU32::new(IDLE),
            transition: Mutex::new(()),
            woken: AtomicBool::new(false),
            reap: AtomicBool::new(false),
            thread: OnceLock::new(),
            tid: AtomicI32::new(0),
            items_started: AtomicU64::new(0),
            current_wq: AtomicU64::new(0),
            probe: Mutex::new(None),
            cpu_clock: OnceLock::new(),
            mon_item: AtomicU64::new(0),
            cpu_base_ns: AtomicU64::new(0),
            mon_cpu_ns: AtomicU64::new(0),
            mon_wall_ns: AtomicU64::new(0),
            mon_slept: AtomicBool::new(false),
            hog_marked: AtomicBool::new(false),
            cm_wakeups: AtomicU64::new(0),
            min_sleep_ns: AtomicU64::new(0),
            wchan: OnceLock::new(),
            batch: Mutex::default(),
        }
    }

    /// Whether the thread sleeps in a futex wait (a lock, a condition
    /// variable, the Python GIL) rather than in a timer or I/O; `None` if
    /// the OS does not say.
    pub(crate) fn in_futex_wait(&self) -> Option<bool> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 64];
        let n = self.wchan.get()?.read_at(&mut buf, 0).ok()?;
        let wchan = &buf[..n];
        // "0" when the kernel hides symbols: no answer.
        if wchan.is_empty() || wchan == b"0" {
            return None;
        }
        Some(wchan.windows(5).any(|w| w == b"futex"))
    }

    /// The worker's batch. Nothing panics while holding it.
    pub(crate) fn batch(&self) -> MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// CPU time of the worker thread; callable from any thread.
    fn cpu_time(&self) -> Duration {
        self.cpu_clock.get().map_or(Duration::ZERO, |&id| sys::clock(id))
    }

    /// Monitor side of hog detection: CPU time the current item used since
    /// it started or last slept, as far as the monitor has seen. `slept`
    /// restarts the count (the kernel counts "without sleeping"), and so
    /// does a window of at least `WAIT_WINDOW` on the monitor's clock
    /// (`wall_ns`) in which the thread got under `1 / MOSTLY_WAITED` of a
    /// CPU: it spent that time blocked, in waits no probe reported (the
    /// explicit-only detector, or a contended lock's wake-ups inside
    /// `ignore_sleeps`). Being preempted is not sleeping, in the kernel's
    /// count either: the window spans several of the scheduler's time
    /// slices, so that a hog sharing a busy CPU still gets its share in
    /// every window (a 1.25 ms window could find it waiting its turn
    /// throughout, and restart its count for good).
    pub(crate) fn cpu_time_since_base(&self, slept: bool, wall_ns: u64) -> (u64, Duration) {
        const MOSTLY_WAITED: u64 = 8;
        const WAIT_WINDOW: u64 = 10_000_000;
        let item = self.items_started.load(Acquire);
        let now = self.cpu_time();
        let now_ns = now.as_nanos() as u64;
        let new_item = self.mon_item.swap(item, Relaxed) != item;
        let wall_step = wall_ns.saturating_sub(self.mon_wall_ns.load(Relaxed));
        let mut waited = false;
        if slept || new_item || wall_step >= WAIT_WINDOW {
            let cpu_step = now_ns.saturating_sub(self.mon_cpu_ns.swap(now_ns, Relaxed));
            self.mon_wall_ns.store(wall_ns, Relaxed);
            waited = cpu_step.saturating_mul(MOSTLY_WAITED) < wall_step;
        }
        if slept || waited || new_item {
            self.cpu_base_ns.store(now_ns, Relaxed);
            return (item, Duration::ZERO);
        }
        (item, now.saturating_sub(Duration::from_nanos(self.cpu_base_ns.load(Relaxed))))
    }

    pub(crate) fn flags(&self) -> u32 {
        self.flags.load(SeqCst)
    }

    /// Sets or clears bits outside `NOT_RUNNING` (no `nr_running` change).
    fn mark(&self, f: u32, on: bool) -> u32 {
        debug_assert_eq!(f & NOT_RUNNING, 0);
        if on {
            self.flags.fetch_or(f, SeqCst)
        } else {
            self.flags.fetch_and(!f, SeqCst)
        }
    }

    /// Sets `f`; returns true if the worker just stopped counting as
    /// running (`nr_running` was decremented: the caller should kick).
    pub(crate) fn set_flags(&self, pool: &Pool, f: u32) -> bool {
        let _transition = self.transition.lock().unwrap_or_else(|e| e.into_inner());
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
        let old = self.take_flags(pool, f);
        old & NOT_RUNNING != 0 && old & !f & NOT_RUNNING == 0
    }

    /// `clr_flags`, giving the flags as they were: whoever clears a flag
    /// (a sleep's end, say) is the one who finds it set.
    pub(crate) fn take_flags(&self, pool: &Pool, f: u32) -> u32 {
        let _transition = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.flags.fetch_and(!f, SeqCst);
        if old & NOT_RUNNING != 0 && old & !f & NOT_RUNNING == 0 {
            pool.nr_running.fetch_add(1, SeqCst);
        }
        old
    }

    /// Records `kind` on this worker's track if the runtime is recording.
    pub(crate) fn trace(&self, pool: &Pool, kind: TraceKind) {
        let trace = &pool.rt.trace;
        if trace.on() {
            let queue =
                pool.rt.wq_names.lock().unwrap_or_else(|e| e.into_inner()).get(&self.current_wq.load(Relaxed)).cloned();
            trace.record(kind, self.tid.load(Relaxed), Some(&self.name), queue.as_deref());
        }
    }

    pub(crate) fn mark_woken(&self) {
        self.woken.store(true, SeqCst);
    }

    pub(crate) fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Asks the idle worker to leave now, as at its idle timeout (if its
    /// pool keeps another idle worker then).
    pub(crate) fn reap_now(&self) {
        self.reap.store(true, SeqCst);
        self.unpark();
    }
}

/// What the current thread is running, for deadlock checks and stats.
pub(crate) struct Current {
    pub(crate) link: PwqRef,
    pub(crate) work_id: Option<u64>,
}

thread_local! {
    static WORKER: RefCell<Option<(Arc<Pool>, Arc<WorkerShared>)>> = const { RefCell::new(None) };
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Whether the calling thread is a worker thread of some runtime.
pub fn is_worker_thread() -> bool {
    WORKER.with(|w| w.borrow().is_some())
}

/// Id of the workqueue whose item the calling thread runs, if any.
pub(crate) fn current_wq_id() -> Option<u64> {
    CURRENT.with(|c| c.borrow().as_ref().map(|c| c.link.wq.id))
}

/// Whether the calling thread runs an item of a freezable queue of the
/// runtime `rt` (whose `freeze` would wait for that item), whether or not
/// the queue still has handles.
pub(crate) fn runs_freezable_item_of(rt: &Arc<crate::runtime::RtCore>) -> bool {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.link.pool.rt, rt) && c.link.wq.flags.contains(Flags::FREEZABLE))
    })
}

/// Id of the work item the calling thread runs, if any.
pub(crate) fn current_work_id() -> Option<u64> {
    CURRENT.with(|c| c.borrow().as_ref().and_then(|c| c.work_id))
}

/// Sets up the calling thread as `me`, a worker of `pool`.
fn attach(pool: &Arc<Pool>, me: &Arc<WorkerShared>) {
    let _ = me.thread.set(thread::current());
    me.tid.store(sys::gettid(), SeqCst);
    if let Some(id) = sys::current_thread_cpu_clock() {
        let _ = me.cpu_clock.set(id);
    }
    if let Ok(f) = std::fs::File::open(format!("/proc/self/task/{}/wchan", me.tid.load(SeqCst))) {
        let _ = me.wchan.set(f);
    }
    let kind = pool.rt.detector.kind;
    if kind != Detector::ExplicitOnly {
        // Perf chosen by `Auto` is armed on demand (`detect/on_demand.rs`).
        let on_demand = kind == Detector::Perf && pool.rt.config.detector == Detector::Auto;
        let (probe, fallback) = if on_demand {
            (Probe::attach_on_demand(), Detector::Perf)
        } else {
            (Probe::attach_current(kind), Detector::Procfs)
        };
        let probe = probe.or_else(|err| {
            // Out of resources (fds, locked memory for perf rings): this worker falls back.
            emit_quietly(
                || tracing::debug!(target: "wq", worker = %me.name, %err, "sleep probe failed, trying {fallback}"),
            );
            Probe::attach_current(fallback)
        });
        *me.probe.lock().unwrap_or_else(|e| e.into_inner()) = probe.ok();
    }
    if let Err(err) = sys::set_current_affinity(&pool.attrs.cpus) {
        emit_quietly(|| tracing::warn!(target: "wq", worker = %me.name, %err, "could not set worker CPU affinity"));
    }
    // Workers start from the monitor's thread (nice -10, timer slack 1 ns,
    // `SCHED_BATCH`) or a highpri worker's (a pool drained at shutdown):
    // take back the runtime builder's slack and policy (a batch worker's
    // wake-up would never preempt, so a lone item would wait for the
    // queueing thread to block), and for default priority its nice value.
    if let Some(slack) = pool.rt.base_timer_slack {
        sys::set_current_timer_slack(slack);
    }
    if let Some(policy) = pool.rt.base_policy {
        if sys::current_fair_policy() != Some(policy) {
            if let Err(err) = sys::set_current_fair_policy(policy) {
                emit_quietly(
                    || tracing::warn!(target: "wq", worker = %me.name, %err, ?policy, "could not take back the runtime builder's scheduling policy"),
                );
            }
        }
    }
    if pool.attrs.nice == 0 {
        let _ = sys::set_current_nice(pool.rt.base_nice.unwrap_or(0));
    } else if pool.nice_status().is_none() {
        pool.record_nice(ask_for_nice(pool.attrs.nice));
    } else {
        let _ = ask_for_nice(pool.attrs.nice);
    }
    WORKER.with(|w| *w.borrow_mut() = Some((pool.clone(), me.clone())));
}

/// Asks for `nice`, then for milder values; returns what was granted.
fn ask_for_nice(nice: i32) -> Option<i32> {
    // Lowering a priority is always allowed; a raise may be refused, so a
    // negative value falls back toward 0 (-20, -10, -5, -2, -1, 0).
    let mut want = nice;
    loop {
        if sys::set_current_nice(want).is_ok() {
            return Some(want);
        }
        if want >= 0 {
            break;
        }
        want /= 2;
    }
    emit_quietly(|| tracing::info!(target: "wq", nice, "the OS refused the workers' nice value"));
    None
}

/// The worker thread's body.
pub(crate) fn run(pool: Arc<Pool>, me: Arc<WorkerShared>) {
    attach(&pool, &me);
    let mut done: Vec<Done> = Vec::new();
    let mut meter = CpuMeter::default();
    // A new thread has used next to no CPU: its start reads as a parking,
    // so its first long item is charged CPU time, not wall time.
    meter.parking();
    let mut slice = WakeSlice::new(pool.rt.config.wake_slice);
    let mut inner = pool.lock();
    inner.nr_starting -= 1;
    loop {
        // Just created, woken or done: is there anything for this worker to
        // do? Whatever lowered this worker's count (`nr_waking`, or
        // `nr_running` going idle) came first; the inbox is read after it.
        pool.admit(&mut inner);
        if inner.dying && inner.worklist.is_empty() {
            break;
        }
        if !inner.dying && !pool.need_more_worker(&inner) {
            match idle_wait(&pool, &me, inner, &mut slice, &mut meter) {
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
        me.clr_flags(&pool, IDLE | SLEEPING);
        meter.checkpoint();
        inner = work_while_needed(&pool, &me, &mut meter, &mut slice, inner, &mut done);
        me.set_flags(&pool, IDLE);
    }
    pool.remove_worker(&me);
    drop(inner);
    pool.rt.nr_workers.fetch_sub(1, SeqCst);
}

/// The busy part of the worker loop (the kernel's `keep_working` loop):
/// takes the next entry, and while items are tiny a stash of more (see
/// `pool/batch.rs`), runs them unlocked, and comes back to the lock to
/// account for them. Returns with the pool locked and the batch empty.
fn work_while_needed<'a>(
    pool: &'a Arc<Pool>,
    me: &WorkerShared,
    meter: &mut CpuMeter,
    slice: &mut WakeSlice,
    mut inner: MutexGuard<'a, PoolInner>,
    done: &mut Vec<Done>,
) -> MutexGuard<'a, PoolInner> {
    loop {
        // 1. Locked: the next entry, plus a stash if the last item was tiny.
        let Some(mut entry) = inner.worklist.pop_front() else { break };
        let stashed = pool.batching && meter.last_was_tiny() && pool.stash_more(&mut inner, me);
        pool.sync_pending(&inner);
        let backlog = stashed || !inner.worklist.is_empty();
        drop(inner);
        if backlog {
            slice.backlog(&me.name);
        }
        // 2. Unlocked: run it, then the stash while `next_stashed` allows.
        //    (Only the owner fills its batch: without a stash it is empty.)
        //    Items of a stash are timed in windows (`meter.rs`).
        meter.leave_lock();
        if stashed {
            meter.open_windows();
        }
        loop {
            process_one(pool, me, meter, entry, done);
            match stashed.then(|| me.next_stashed(pool, done)).flatten() {
                Some(next) => entry = next,
                None => break,
            }
        }
        if let Some(charge) = meter.close_windows() {
            me.push_charge(charge);
        }
        // 3. Locked: what is left of the stash goes back to the front of
        //    the worklist (to be taken again in step 1), and everything
        //    finished is accounted for.
        inner = pool.lock();
        inner = complete_local(pool, inner, stashed.then_some(me), done);
        if !pool.keep_working(&inner) {
            break;
        }
    }
    inner
}

/// Takes back the batch of `me` (if it stashed) and applies the
/// accounting of this pool's finished entries.
fn complete_local<'a>(
    pool: &'a Arc<Pool>,
    mut inner: MutexGuard<'a, PoolInner>,
    me: Option<&WorkerShared>,
    done: &mut Vec<Done>,
) -> MutexGuard<'a, PoolInner> {
    let mut follow_ups = FollowUps::default();
    if let Some(me) = me {
        pool.reclaim(&mut inner, me, &mut follow_ups);
    }
    pool.apply(&mut inner, done.drain(..), &mut follow_ups);
    if follow_ups.is_empty() {
        return inner;
    }
    // Flushers hold their flush lock while taking pool locks, and other
    // pods' pools are locked one at a time: both happen with this pool unlocked.
    drop(inner);
    follow_ups.run();
    pool.lock()
}

/// A rescuer runs `entries` of `pool` on its own thread. `me` keeps `IDLE`
/// set, so nothing it does moves the pool's `nr_running`. Returns how many
/// entries ran user code: stale ones (cancelled, superseded) are only
/// accounted, and an instance handed to the item's runner elsewhere runs
/// there.
pub(crate) fn rescue(pool: &Arc<Pool>, me: &Arc<WorkerShared>, entries: Vec<Entry>) -> u64 {
    // The calling thread may be a worker in the middle of its own item (a
    // runtime dropped inside an item drains another pool's orphans here):
    // its context is put back afterwards, or that item's end would find it
    // gone.
    let outer_worker = WORKER.with(|w| w.replace(Some((pool.clone(), me.clone()))));
    let outer_item = CURRENT.with(|c| c.borrow_mut().take());
    let mut meter = CpuMeter::default();
    meter.checkpoint();
    let mut done = Vec::new();
    let mut ran = 0;
    for entry in entries {
        process_one(pool, me, &mut meter, entry, &mut done);
        for d in done.drain(..) {
            ran += d.ran();
            complete_entry(d);
        }
    }
    WORKER.with(|w| *w.borrow_mut() = outer_worker);
    CURRENT.with(|c| *c.borrow_mut() = outer_item);
    ran
}

/// Parks `me` on the idle list until woken, or reaps it after the idle
/// timeout if another idle worker stays in reserve. Returns `None` if the
/// worker was reaped and must exit.
fn idle_wait<'a>(
    pool: &'a Arc<Pool>,
    me: &Arc<WorkerShared>,
    mut inner: MutexGuard<'a, PoolInner>,
    slice: &mut WakeSlice,
    meter: &mut CpuMeter,
) -> Option<MutexGuard<'a, PoolInner>> {
    me.woken.store(false, SeqCst);
    // A request to leave made while it was at work is stale: the manager
    // asks again if it still needs the room.
    me.reap.store(false, SeqCst);
    // This worker no longer counts in `nr_running`.
    let quiet = pool.nr_running() <= 0 && inner.worklist.is_empty();
    inner.idle.push(me.clone());
    let timeout = pool.rt.config.idle_timeout;
    // An idle timeout too long for a deadline means never reaping.
    let mut deadline = Instant::now().checked_add(timeout);
    drop(inner);
    // Work often arrives right after a worker went idle. Waiting for it a
    // little before parking saves both sides a futex call (an unpark of a
    // thread that is not parked is just a store) and lets a producer on this
    // CPU queue a batch before the worker takes the CPU back.
    // The CPU clock read before the spin: a worker kicked during it is
    // as idle as a parked one (300 ns later in noticing the kick, against
    // a wall-time charge for its next long item).
    meter.parking();
    spin_until_woken(me);
    if !me.woken.load(SeqCst) {
        slice.before_park(quiet, &me.name);
    }
    loop {
        match deadline {
            Some(d) => thread::park_timeout(d.saturating_duration_since(Instant::now())),
            None => thread::park(),
        }
        inner = pool.lock();
        if me.woken.swap(false, SeqCst) {
            pool.add_waking(&mut inner, -1);
            return Some(inner);
        }
        let reap = me.reap.swap(false, SeqCst);
        if reap || deadline.is_some_and(|d| Instant::now() >= d) {
            if inner.idle.len() > 1 {
                inner.idle.retain(|w| !Arc::ptr_eq(w, me));
                pool.remove_worker(me);
                drop(inner);
                pool.rt.nr_workers.fetch_sub(1, SeqCst);
                emit_quietly(|| tracing::debug!(target: "wq", worker = %me.name, "idle worker reaped"));
                return None;
            }
            if reap {
                // The pool's last idle worker stays, whatever the manager wanted.
                drop(inner);
                continue;
            }
            // The pool's last idle worker, idle for the whole timeout: if
            // no other worker is at work either, the pool gives back what a
            // burst left in its buffers (`pool/buffers.rs`).
            pool.shrink_buffers_if_quiet(&mut inner);
            deadline = Instant::now().checked_add(timeout);
        }
        drop(inner);
    }
}

/// Busy-waits a bounded time for a kick: spin hints first, then yields
/// (which also hand the CPU to a producer pinned to the same CPU).
fn spin_until_woken(me: &WorkerShared) {
    const SPINS: u32 = 64;
    const YIELDS: u32 = 32;
    for i in 0..SPINS + YIELDS {
        if me.woken.load(SeqCst) {
            return;
        }
        if i < SPINS {
            std::hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

/// Runs one dequeued entry. Accounting for entries of this pool is pushed
/// to `done`; entries of other pools (hand-offs) are completed right here.
fn process_one(pool: &Arc<Pool>, me: &WorkerShared, meter: &mut CpuMeter, entry: Entry, done: &mut Vec<Done>) {
    let Entry { pwq: link, color, job } = entry;
    match job {
        Job::Once(f) => one_shot(pool, me, meter, link, color, f, done),
        Job::Shared(item) => one_shot(pool, me, meter, link, color, || item.run(), done),
        // Whether the task was woken during its poll is not ours to act
        // on: that wake-up queued the next poll.
        Job::Poll(runnable) => {
            let poll = || Outcome::of_call(|| _ = runnable.run());
            one_shot(pool, me, meter, link, color, poll, done);
        }
        Job::Work { work, gen } => {
            run_work(pool, me, meter, &work, Parked { link, color, gen }, done);
            // The last reference drops the item's function and its captures.
            drop_quietly(work);
        }
    }
}

/// Runs a one-shot entry (of pwq `link`, flush colour `color`) and queues its record.
fn one_shot(
    pool: &Arc<Pool>,
    me: &WorkerShared,
    meter: &mut CpuMeter,
    link: PwqRef,
    color: u64,
    f: impl FnOnce() -> Outcome,
    done: &mut Vec<Done>,
) {
    let (link, outcome, cpu_time) = execute(pool, me, meter, link, None, f);
    finish_entry(pool, Done::new(link, color, outcome, cpu_time), done);
}

/// Claims and runs a work item instance, then any instance handed to this
/// worker while it ran (see `work/README.md`).
fn run_work(
    pool: &Arc<Pool>,
    me: &WorkerShared,
    meter: &mut CpuMeter,
    work: &WorkShared,
    mut inst: Parked,
    done: &mut Vec<Done>,
) {
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
        let (link, outcome, cpu_time) =
            execute(pool, me, meter, link, Some(work.id), || Outcome::of_call(|| work.call()));
        finish_entry(pool, Done::new(link, color, outcome, cpu_time), done);
        match take_next_instance(pool, work, gen, done) {
            Some(next) => {
                // The next instance runs user code, which may flush, drain
                // or wait for the queue of the run that just ended: its
                // record is applied first, as the kernel's worker does
                // after every item (deferring it is only for a stash).
                for d in done.drain(..) {
                    complete_entry(d);
                }
                inst = next;
            }
            None => return,
        }
    }
}

/// Ends the execution of generation `gen`: clears `RUNNING`, unless
/// instances were parked for this worker, in which case the live one is
/// returned to run next. `gen` retires after `RUNNING` is cleared, so a
/// `flush` that returns finds the item no longer running (as the kernel's
/// `flush_work`), or, when a live instance was handed over, just before
/// that instance is claimed (`work/README.md`, "Waiting").
fn take_next_instance(pool: &Arc<Pool>, work: &WorkShared, gen: u64, done: &mut Vec<Done>) -> Option<Parked> {
    let mut retired = false;
    loop {
        match work.state.try_finish() {
            Ok(ended) => {
                // Up to the generation below the pending one: this run's,
                // and any cancelled while it ran (`Cancelled::to_retire`).
                let upto = retired_at_finish(ended);
                debug_assert!(gen_reached(upto, gen), "a run of generation {gen} ended below it, at {upto}");
                if retired {
                    // Counted before a claim that a cancel then beat: that
                    // cancel left its generation to this step, and
                    // `cancel_sync` waits for RUNNING to clear.
                    work.retire(upto);
                } else {
                    work.retire_run(upto);
                }
                return None;
            }
            Err(_) => {
                let parked = {
                    let mut slot = work.lock_parked();
                    work.state.clear_handoff();
                    std::mem::take(&mut *slot)
                };
                // Claiming clears PENDING while RUNNING stays set: a flush
                // that looked in between would find the item running and
                // nothing pending, wait for the run count to move, and
                // return when this run retired, before the claimed
                // instance (queued before that flush) ran. So this run
                // retires first. (Liveness only ever ends, so an instance
                // not live here cannot be claimed below.)
                if !retired && parked.iter().any(|p| work.state.is_live(p.gen)) {
                    work.retire_run(retired_at_finish(work.state.load()));
                    retired = true;
                }
                let mut next = None;
                for p in parked {
                    if next.is_none() && work.state.claim_parked(p.gen) {
                        next = Some(p);
                    } else {
                        finish_entry(pool, p.discarded(), done);
                    }
                }
                if next.is_some() {
                    debug_assert!(retired, "claimed a handed-off instance before retiring the run it follows");
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
        d.push_into(done);
    } else {
        complete_entry(d);
    }
}

/// Runs user code for one entry with the bookkeeping around it: the
/// current-item context, CPU-intensive accounting, CPU time.
fn execute(
    pool: &Arc<Pool>,
    me: &WorkerShared,
    meter: &mut CpuMeter,
    link: PwqRef,
    work_id: Option<u64>,
    f: impl FnOnce() -> Outcome,
) -> (PwqRef, Outcome, Duration) {
    let intensive = link.wq.flags.contains(Flags::CPU_INTENSIVE);
    let wq_id = link.wq.id;
    // The item before this one was tiny: this one most likely is too.
    let tiny = meter.last_was_tiny();
    let (start, closed) = meter.item_start(link);
    if let Some(charge) = closed {
        me.push_charge(charge);
    }
    CURRENT.with(|c| *c.borrow_mut() = Some(Current { link, work_id }));
    // A worker that does not count as running must chain the pending work
    // to another worker itself (the kernel's kick in process_one_work).
    if intensive && me.set_flags(pool, CPU_INTENSIVE) {
        pool.worker_stopped_running(me);
    }
    if let Some(pod) = &pool.attrs.pod {
        repatriate(pod, &pool.attrs.cpus);
    }
    // Counted on its CPU until it ends (`pool/spread.rs`), unless it runs
    // in a stash of tiny items, or on a rescuer (which keeps `IDLE`, and
    // its own affinity: it serves other pools too).
    let _placed = match (&pool.spread, &start) {
        (Some(spread), Start::Timed(_)) if !tiny && me.flags() & IDLE == 0 => spread.place(&pool.attrs.cpus),
        _ => None,
    };
    // Only this thread writes these; the monitor reads them. Release, not
    // SeqCst: no store-then-load protocol uses it (the monitor's hog check
    // only compares two readings), and a SeqCst store costs every item a
    // full barrier (an `xchg` on x86).
    me.items_started.store(me.items_started.load(Relaxed) + 1, Release);
    me.current_wq.store(wq_id, Relaxed);
    emit_quietly(|| tracing::trace!(target: "wq", wq = wq_id, worker = %me.name, "execute_start"));
    me.trace(pool, TraceKind::Start);
    let outcome = f();
    emit_quietly(|| tracing::trace!(target: "wq", wq = wq_id, worker = %me.name, "execute_end"));
    // A sleep the detector saw ends with the item at the latest: its wake
    // goes on the timeline unless the monitor recorded it first.
    if me.flags() & (CPU_INTENSIVE | SLEEPING) != 0 && me.take_flags(pool, CPU_INTENSIVE | SLEEPING) & SLEEPING != 0 {
        me.trace(pool, TraceKind::Wake);
    }
    me.trace(pool, TraceKind::End);
    me.current_wq.store(0, Relaxed);
    let current = CURRENT.with(|c| c.borrow_mut().take()).expect("current item vanished");
    let cpu_time = meter.item_end(start, current.link, Arc::ptr_eq(&current.link.pool, pool));
    let counters = &current.link.wq.counters;
    if me.hog_marked.load(Relaxed) && me.hog_marked.swap(false, Relaxed) {
        counters.cpu_hogs.fetch_add(1, Relaxed);
    }
    if me.cm_wakeups.load(Relaxed) != 0 {
        counters.cm_wakeups.fetch_add(me.cm_wakeups.swap(0, Relaxed), Relaxed);
    }
    (current.link, outcome, cpu_time)
}

/// Non-strict affinity: a worker of a pod's pool may roam the queue's CPUs,
/// but an item starts inside the pod (the kernel's repatriation at work item
/// start). Pinning to the pod migrates the thread; widening again lets the
/// scheduler move it out later if the pod is busy.
fn repatriate(pod: &[usize], cpus: &[usize]) {
    if sys::current_cpu().is_some_and(|cpu| !pod.contains(&cpu)) {
        let _ = sys::move_current(pod, cpus);
    }
}
