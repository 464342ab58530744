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
//! whoever leaves work pending behind a running worker (a queuer that
//! finds `nr_running > 0`, a worker that takes an item and leaves more)
//! raises `nr_pending` first, then checks `parked` (both SeqCst). One of
//! the two always sees the other. Work queued to a pool with nobody
//! running needs no monitor: it wakes an idle worker, and if that worker
//! later sleeps with work left, its own pop pokes. With no idle worker it
//! asks the manager, whose request wakes this thread; a parked monitor
//! that wakes to find work pending resumes ticking, so a pool whose
//! worker creation fails still reaches the watchdog (the manager's
//! retries keep waking it).
//!
//! Polling a worker may arm its perf event (`detect/on_demand.rs`); once
//! parked, the monitor waits `DISARM_AFTER` and closes them all before it
//! parks for good.
//!
//! The monitor runs as `SCHED_BATCH` (at nice −10 where allowed), so no
//! wake-up of it preempts a running thread. A sleep costs the pool only
//! when its CPU would otherwise idle, and on an idle CPU the monitor runs
//! at once; on a busy CPU it waits for the next switch there (a thread
//! blocks, or a slice ends at a scheduler tick) rather than forcing one.
//! Forced switches were most of what detection cost a busy pool: each tick
//! preempted a worker, often with a second switch between workers after
//! it (BENCHMARKS.md, session 12). Workers it starts take back the runtime
//! builder's policy (`worker::attach`), since a lone item's wake-up must
//! preempt (`worker/slice.rs`).
//!
//! A panic on this thread (user code runs here: `tracing` subscribers, the
//! spawn hook, periodic jobs) does not end it: the monitor counts it in
//! `RuntimeStats::monitor_panics`, logs it, asks again for the workers
//! whose requests it may have lost, and starts over.
//!
//! The same thread is the runtime's manager (`runtime/manager.rs`): it
//! serves worker-creation requests, which unpark it, at the top of every
//! tick and on every wake-up while parked, and sleeps no longer than the
//! manager's next retry or periodic job. Being parked for the pools does
//! not stop it creating workers.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::detect::ThreadState;
use crate::pool::Pool;
use crate::runtime::manager::{Manager, Retries};
use crate::runtime::RtCore;
use crate::trace::TraceKind;
use crate::worker::{WorkerShared, BLOCKING, CPU_INTENSIVE, IDLE, IGNORE_SLEEPS, SLEEPING};
use crate::{sys, Error};
use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Relaxed, Ordering::SeqCst};

/// How often busy workers are polled while work is pending. Each tick is a
/// wake-up: on a CPU busy with workers it used to preempt one (a context
/// switch each way, 10–15 µs of CPU on this VM, and often a second switch
/// between workers after it); as `SCHED_BATCH` the monitor waits for the
/// next switch there instead, or takes an idle CPU at once.
/// A bound pool has no spare runner: its CPU idles until a sleep is seen,
/// so while one has work pending the monitor ticks every 40 µs (a sleep is
/// seen ~60 µs after it began, on average). Unbound pools keep a spare
/// runner per CPU, which hides the delay, so for them alone it ticks every
/// 100 µs: at 40 µs the ticks cost more CPU than the faster detection won
/// back (BENCHMARKS.md, mixed).
const TICK_BOUND: Duration = Duration::from_micros(40);
const TICK_UNBOUND: Duration = Duration::from_micros(100);
/// After this many ticks in a row that saw no worker asleep, the tick
/// interval doubles, up to `MAX_INTERVAL`: a pool busy
/// with items that never sleep should not pay for the fine tick, while
/// the first sleep it does see brings the fine tick back.
const QUIET_TICKS: u32 = 32;
const MAX_INTERVAL: Duration = Duration::from_micros(400);
/// The longest interval between CPU-clock readings of running workers
/// (each is a system call per worker, too dear for every tick).
const HOG_TICK_MAX: Duration = Duration::from_millis(1);
/// How long the monitor keeps ticking after the last pending work (a few
/// ticks: parking and being poked again costs a futex call each way).
const LINGER: Duration = Duration::from_micros(200);
/// A sleep shorter than this is not acted on: a thread started for it
/// would only go idle again (XNU counts a worker blocked less than ~200 µs
/// ago as still busy). The second value applies when an idle worker can
/// take over: waking it is a futex call, undone cheaply if the sleep was
/// short, so only blips (a page fault, a briefly contended lock) are
/// filtered out.
///
/// Bound pools have no spare runner: their CPU idles until the sleep is
/// acted on, so they act early. Unbound pools have a spare per CPU to run
/// meanwhile and wait longer: each sleep acted on puts one more item in
/// flight, and one more thread.
const SLEEP_HYSTERESIS_BOUND: (Duration, Duration) = (Duration::from_micros(50), Duration::from_micros(20));
const SLEEP_HYSTERESIS_UNBOUND: (Duration, Duration) = (Duration::from_micros(100), Duration::from_micros(50));
/// How long the runtime must have had no pending work before the monitor
/// closes the perf events it armed (`detect/on_demand.rs`): a service under
/// steady load keeps them, while an idle pool's wake-ups soon stop paying
/// for them.
const DISARM_AFTER: Duration = Duration::from_millis(50);
/// A worker asleep this long gives back its stash even when its sleep is
/// not acted on (`ignore_sleeps`, or below the hysteresis).
const STASH_RECLAIM_AFTER: Duration = Duration::from_micros(20);
/// How long a panicked monitor waits before it starts over.
const RESTART_DELAY: Duration = Duration::from_millis(10);

pub(crate) struct Monitor {
    parked: AtomicBool,
    thread: OnceLock<Thread>,
    shutdown: AtomicBool,
}

impl Monitor {
    pub(crate) fn new() -> Arc<Monitor> {
        Arc::new(Monitor { parked: AtomicBool::new(false), thread: OnceLock::new(), shutdown: AtomicBool::new(false) })
    }

    /// Whether the monitor sleeps until poked.
    pub(crate) fn is_parked(&self) -> bool {
        self.parked.load(SeqCst)
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

    /// Starts the monitor thread over `all`, the runtime's pool list
    /// (unbound pools join it as queues ask for them).
    pub(crate) fn start(self: &Arc<Self>, all: Arc<Mutex<Vec<Arc<Pool>>>>, core: Arc<RtCore>) -> Result<(), Error> {
        let me = self.clone();
        thread::Builder::new()
            .name("wq/monitor".into())
            .spawn(move || me.supervise(&all, &core))
            .map(drop)
            .map_err(|err| Error::spawn("the monitor thread wq/monitor", err))
    }

    /// Runs the monitor, and starts it over after a panic. This thread
    /// calls user code (`tracing` subscribers, the spawn hook, periodic
    /// jobs), and a bug of ours would panic it too; without it no worker is
    /// ever created again and no sleep is seen, so the runtime would hang
    /// with nothing to say why. A panic is counted (`RuntimeStats::
    /// monitor_panics`) and logged; what the lost tick held is rebuilt by
    /// `reask_for_workers`, except a periodic job that was running (the
    /// panicking one, or one due with it): it is not run again.
    fn supervise(&self, all: &Mutex<Vec<Arc<Pool>>>, core: &RtCore) {
        loop {
            let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| self.run(all, core))) else { return };
            let count = core.monitor_panics.fetch_add(1, SeqCst) + 1;
            let why = crate::Panicked::new(payload);
            // The subscriber that panicked may be the one asked to log it.
            let _ = panic::catch_unwind(|| {
                tracing::error!(target: "wq", count, panic = %why.message(), "the monitor panicked; starting it over");
            });
            self.parked.store(false, SeqCst);
            if self.shutdown.load(SeqCst) {
                return;
            }
            // A monitor that panics at every tick must not spin a CPU.
            thread::sleep(RESTART_DELAY);
            reask_for_workers(all);
        }
    }

    fn run(&self, all: &Mutex<Vec<Arc<Pool>>>, core: &RtCore) {
        let _ = self.thread.set(thread::current());
        // This thread is also the manager (`runtime/manager.rs`).
        core.manager.serve_on_current_thread();
        let mut retries = Retries::default();
        // A 100 µs sleep lasts 100 µs only with a fine timer slack.
        sys::set_current_timer_slack(1);
        // The kernel learns of sleeps inside its scheduler; our stand-in must
        // not queue behind the very threads it watches on a busy machine.
        // Best effort: without the privilege it runs at the default priority.
        if sys::set_current_nice(-10).is_err() {
            tracing::debug!(target: "wq", "the monitor runs at the default priority (raising it was refused)");
        }
        // Its wake-ups must never preempt a worker (module docs).
        if sys::current_fair_policy() == Some(sys::FairPolicy::Normal) {
            if let Err(err) = sys::set_current_fair_policy(sys::FairPolicy::Batch) {
                tracing::debug!(target: "wq", %err, "the monitor's wake-ups may preempt (SCHED_BATCH was refused)");
            }
        }
        let hog_threshold = core.config.cpu_hog_threshold;
        let mut busy: Vec<Arc<WorkerShared>> = Vec::new();
        let mut pools: Vec<Arc<Pool>> = Vec::new();
        let mut watch: Vec<Watch> = Vec::new();
        let mut last_pending = Instant::now();
        // Hogs are caught to within an eighth of the threshold; sleeps need the fine tick.
        let hog_period = (hog_threshold / 8).clamp(TICK_BOUND, HOG_TICK_MAX);
        let mut last_hog_tick = Instant::now();
        let started = Instant::now();
        let mut quiet_ticks: u32 = 0;
        // Whether a probe was polled (and so may have armed perf) since the last disarm.
        let mut polled = false;
        while !self.shutdown.load(SeqCst) {
            let manager_due = core.manager.service(&mut retries, all);
            pools.clear();
            pools.extend(all.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
            watch.resize_with(pools.len(), Watch::new);
            let mut any_pending = false;
            let mut bound_pending = false;
            let mut saw_sleeper = false;
            // On hog ticks: the monitor's clock, for telling waits from work.
            let hog_tick = (last_hog_tick.elapsed() >= hog_period).then(|| {
                last_hog_tick = Instant::now();
                u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
            });
            for (pool, watch) in pools.iter().zip(&mut watch) {
                if !pool.has_pending() {
                    watch.progress(None);
                    continue;
                }
                any_pending = true;
                bound_pending |= pool.attrs.cpu.is_some();
                busy.clear();
                busy.extend(pool.workers().iter().filter(|w| w.flags() & IDLE == 0).cloned());
                let completed = pool.completed.load(Relaxed);
                for w in &busy {
                    saw_sleeper |= check_worker(pool, w, hog_threshold, hog_tick);
                }
                polled |= !busy.is_empty();
                if watch.progress(Some(completed)) >= core.config.watchdog_threshold && !watch.reported {
                    watch.reported = true;
                    report_stall(pool, &busy, watch.since.elapsed(), core);
                }
            }
            let now = Instant::now();
            if any_pending {
                last_pending = now;
            } else if now - last_pending >= LINGER && self.park(all, &mut polled, &core.manager, &mut retries) {
                last_pending = Instant::now();
                quiet_ticks = 0;
                continue;
            }
            quiet_ticks = if saw_sleeper { 0 } else { quiet_ticks.saturating_add(1) };
            let tick = if bound_pending { TICK_BOUND } else { TICK_UNBOUND };
            let mut wait = (tick * (1 << (quiet_ticks / QUIET_TICKS).min(4))).min(MAX_INTERVAL);
            if let Some(due) = manager_due {
                wait = wait.min(due.saturating_duration_since(Instant::now()));
            }
            thread::park_timeout(wait);
        }
    }

    /// Parks until poked, meanwhile serving the manager's requests (they
    /// unpark this thread) and disarming probes if `polled` and the wait
    /// lasts `DISARM_AFTER`. Returns `false`, having unparked, if it finds
    /// work pending, before parking or at any wake-up; `true` once poked.
    /// It reads the live pool list, not the tick's copy: an unbound pool
    /// added since has work the copy would not show.
    fn park(&self, all: &Mutex<Vec<Arc<Pool>>>, polled: &mut bool, manager: &Manager, retries: &mut Retries) -> bool {
        let any_pending = || all.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|p| p.has_pending());
        self.parked.store(true, SeqCst);
        let since = Instant::now();
        while self.parked.load(SeqCst) && !self.shutdown.load(SeqCst) {
            let manager_due = manager.service(retries, all);
            // The first check is the parking protocol's re-check (after
            // `parked` is set). The later ones catch work queued while
            // nobody ran: it woke no monitor, it needed a worker, and the
            // manager's request woke us instead. If that creation failed
            // the work stays pending with nobody to run it, and only
            // ticking lets the watchdog see it; the retries keep waking
            // this thread, so a stall is seen within a backoff.
            if any_pending() {
                self.parked.store(false, SeqCst);
                return false;
            }
            let disarm_at = polled.then(|| since + DISARM_AFTER);
            match manager_due.into_iter().chain(disarm_at).min() {
                Some(t) => thread::park_timeout(t.saturating_duration_since(Instant::now())),
                None => thread::park(),
            }
            if *polled && self.parked.load(SeqCst) && since.elapsed() >= DISARM_AFTER {
                let pools = all.lock().unwrap_or_else(|e| e.into_inner()).clone();
                disarm_probes(&pools);
                *polled = false;
            }
        }
        true
    }
}

/// After a panic of the monitor: the manager's requests it had taken and
/// the creations it was retrying were lost with its stack. Every pool that
/// may have lost one asks again: one with a request outstanding, and one
/// with work queued and no worker starting or idle to take it (a failing
/// creation, whose request was already answered). Asking twice is harmless:
/// the manager creates a worker only if the pool still wants one.
fn reask_for_workers(all: &Mutex<Vec<Arc<Pool>>>) {
    let pools = all.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pool in pools {
        let mut inner = pool.lock();
        if inner.want_worker || (!inner.worklist.is_empty() && pool.wants_worker(&inner)) {
            inner.want_worker = false;
            pool.request_worker(&mut inner);
        }
    }
}

/// Closes every perf event armed by an on-demand probe (`detect/on_demand.rs`).
fn disarm_probes(pools: &[Arc<Pool>]) {
    for pool in pools {
        // `workers` is a leaf lock: copy the list rather than close fds under it.
        let workers: Vec<Arc<WorkerShared>> = pool.workers().clone();
        for w in workers {
            if let Some(probe) = w.probe.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                probe.disarm();
            }
        }
    }
}

/// The watchdog's view of one pool.
struct Watch {
    completed: u64,
    since: Instant,
    reported: bool,
}

impl Watch {
    fn new() -> Watch {
        Watch { completed: 0, since: Instant::now(), reported: false }
    }

    /// Records the pool's completion count (`None`: nothing pending, which
    /// is not a stall); returns how long it has not moved.
    fn progress(&mut self, completed: Option<u64>) -> Duration {
        if completed != Some(self.completed) {
            self.completed = completed.unwrap_or(self.completed);
            self.since = Instant::now();
            self.reported = false;
        }
        self.since.elapsed()
    }
}

/// The kernel's workqueue watchdog report ("BUG: workqueue lockup"): the
/// pool, how long it has been stuck, and what each busy worker runs.
fn report_stall(pool: &Pool, busy: &[Arc<WorkerShared>], stalled: Duration, core: &RtCore) {
    pool.stalls.fetch_add(1, Relaxed);
    let names = core.wq_names.lock().unwrap_or_else(|e| e.into_inner());
    let workers: Vec<String> = busy
        .iter()
        .map(|w| {
            let wq = names.get(&w.current_wq.load(Relaxed)).map_or("-", String::as_str);
            format!("{} (tid {}) runs an item of {wq:?}, flags {:#x}", w.name, w.tid.load(Relaxed), w.flags())
        })
        .collect();
    tracing::warn!(
        target: "wq",
        pool = %pool.label(),
        ?stalled,
        workers = ?workers,
        "workqueue lockup: pool has pending work and made no progress"
    );
}

/// Returns the stash of a worker found asleep to the worklist.
fn reclaim_stash(pool: &Arc<Pool>, w: &WorkerShared) {
    if w.has_stash() {
        pool.worker_stopped_running(w);
    }
}

/// One busy worker of a pool with pending work: did it sleep, wake, or
/// run past the CPU-hog threshold? Returns whether it was seen asleep
/// unannounced (not inside `blocking` or `ignore_sleeps`).
fn check_worker(pool: &Arc<Pool>, w: &WorkerShared, hog_threshold: Duration, hog_tick: Option<u64>) -> bool {
    let flags = w.flags();
    // A panic while it was held (the monitor runs user code: `tracing`
    // subscribers) leaves the probe as it was; reading it as unknown for
    // good would blind the monitor to this worker's sleeps.
    let state = w.probe.lock().unwrap_or_else(|e| e.into_inner()).as_mut().map_or(ThreadState::Unknown, |p| p.poll());
    match state {
        ThreadState::Sleeping { since } if flags & (SLEEPING | IGNORE_SLEEPS) == 0 => {
            // The kernel's wq_worker_sleeping(): stop counting it, kick the pool.
            let min_futex = Duration::from_nanos(w.min_sleep_ns.load(Relaxed));
            let asleep_for = since.elapsed();
            let (hysteresis, hysteresis_idle) =
                if pool.attrs.cpu.is_some() { SLEEP_HYSTERESIS_BOUND } else { SLEEP_HYSTERESIS_UNBOUND };
            let long_enough = (asleep_for >= hysteresis || (asleep_for >= hysteresis_idle && pool.has_idle_worker()))
                && (min_futex.is_zero() || asleep_for >= min_futex || w.in_futex_wait() == Some(false));
            if long_enough && w.set_flags(pool, SLEEPING) {
                w.trace(pool, TraceKind::Sleep);
                if pool.worker_stopped_running(w) {
                    w.cm_wakeups.fetch_add(1, Relaxed);
                }
            } else if asleep_for >= STASH_RECLAIM_AFTER {
                reclaim_stash(pool, w);
            }
        }
        ThreadState::Sleeping { since } if since.elapsed() >= STASH_RECLAIM_AFTER => {
            // Asleep but still counted as running (`ignore_sleeps`): the
            // sleep is not worth another worker, but the entries it stashed
            // must not wait behind it where the worklist's would not.
            reclaim_stash(pool, w);
        }
        // The kernel's wq_worker_running(). The item's end may have cleared
        // the flag first, and recorded the wake itself.
        ThreadState::Running if flags & SLEEPING != 0 && w.take_flags(pool, SLEEPING) & SLEEPING != 0 => {
            w.trace(pool, TraceKind::Wake);
        }
        _ => {}
    }
    // Hogging means running past the threshold without sleeping: a sleep
    // seen by either hook restarts the count. Reading a thread's CPU clock
    // is a system call, so it happens only on hog ticks, and never for a
    // sleeper: the restart waits for the first hog tick that sees it run.
    let asleep = matches!(state, ThreadState::Sleeping { .. });
    let slept = flags & (SLEEPING | BLOCKING) != 0 || asleep;
    if slept {
        w.mon_slept.store(true, Relaxed);
    }
    let unannounced = asleep && flags & (BLOCKING | IGNORE_SLEEPS) == 0;
    let Some(wall_ns) = hog_tick.filter(|_| !slept) else { return unannounced };
    let (item, used) = w.cpu_time_since_base(w.mon_slept.swap(false, Relaxed), wall_ns);
    if flags & CPU_INTENSIVE == 0 && used >= hog_threshold && w.items_started.load(Acquire) == item {
        w.hog_marked.store(true, Relaxed);
        if w.set_flags(pool, CPU_INTENSIVE) {
            pool.worker_stopped_running(w);
        }
    }
    false
}
