//! Worker pools and concurrency management.
//!
//! A pool is a worklist plus the workers that serve it. Bound pools (one
//! normal and one highpri per CPU) pin their workers to their CPU and keep
//! exactly one worker *running* while work is pending: a new worker starts
//! only when the running one sleeps. See `README.md` beside this file for the
//! rules and the lost-wake-up argument.

mod batch;
mod buffers;
mod done;
mod inbox;
mod link;
mod pwq;
mod shutdown;
mod spread;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub(crate) use batch::{Batch, FollowUps};
use crossbeam_utils::CachePadded;
pub(crate) use done::Done;
use inbox::Inbox;
pub(crate) use link::PwqRef;
use pwq::Placement;
pub(crate) use pwq::{PwqHandle, PwqLink, PwqState};
use spread::Spread;

use crate::rescuer::Rescuer;
use crate::runtime::RtCore;
use crate::trace::TraceKind;
use crate::work::WorkShared;
use crate::worker::WorkerShared;
use crate::workqueue::{Limit, WqCore};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

/// Workers an unbound pool keeps running per CPU: one runner and one
/// spare. While the monitor has not yet seen a running worker fall asleep
/// (a tick and a hysteresis, ~100 µs), the spare keeps that CPU busy; an
/// unbound pool's items are the ones most likely to sleep unannounced.
const UNBOUND_RUNNERS_PER_CPU: usize = 2;

/// One queued instance of something to run.
pub(crate) struct Entry {
    pub(crate) pwq: PwqRef,
    /// The flush colour, given when the entry is admitted to its pwq (in
    /// the inbox it is still 0).
    pub(crate) color: u64,
    pub(crate) job: Job,
}

/// What an entry runs.
pub(crate) enum Job {
    /// An instance of a reusable work item, valid only while the item's
    /// state still carries `gen` (see `work/README.md`).
    Work { work: Arc<WorkShared>, gen: u64 },
    /// A one-shot closure.
    Once(Box<dyn FnOnce() -> Outcome + Send>),
    /// An entry that is its own allocation, shared with whoever waits for
    /// it: a submitted closure with its result slot, or a `SharedItem`.
    Shared(crate::completion::SharedJob),
    /// One poll of an async task. The `Runnable` is itself the task's
    /// handle, so queueing a poll allocates nothing; dropping it unrun
    /// cancels the task (async-task's rule).
    Poll(async_task::Runnable),
}

/// How the user code of one entry ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ran,
    Panicked,
    /// Cancelled before it started (a `Completion` cancel): nothing ran.
    Skipped,
}

impl Outcome {
    /// Runs user code, containing its panic (and one from dropping the panic).
    pub(crate) fn of_call(f: impl FnOnce()) -> Outcome {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(()) => Outcome::Ran,
            Err(payload) => {
                drop_quietly(payload);
                Outcome::Panicked
            }
        }
    }
}

/// Drops a value owned by user code on one of the runtime's threads (a
/// worker, the timer): a panic in its `Drop` must not unwind into that
/// thread. (The payload of such a panic is leaked rather than dropped,
/// since dropping it could panic again.)
pub(crate) fn drop_quietly<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        emit_quietly(|| tracing::warn!(target: "wq", "a value dropped by a runtime thread panicked in its Drop"));
        std::mem::forget(payload);
    }
}

/// Emits a `tracing` event on one of the runtime's threads, where a
/// subscriber's panic must not unwind: under a pool lock, or in a worker,
/// rescuer or timer outside user code, it would kill the thread with its
/// counts and entries. The panic is dropped (its payload leaked, as in
/// [`drop_quietly`]). The monitor needs none of this: it survives panics.
pub(crate) fn emit_quietly(emit: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(emit)) {
        std::mem::forget(payload);
    }
}

/// What kind of pool this is; fixed at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PoolAttrs {
    /// The CPU of a bound pool; `None` for unbound pools.
    pub(crate) cpu: Option<usize>,
    pub(crate) highpri: bool,
    /// The nice value workers ask for.
    pub(crate) nice: i32,
    /// CPUs the workers may run on.
    pub(crate) cpus: Vec<usize>,
    /// A non-strict unbound pod narrower than `cpus`: workers found
    /// outside it when an item starts are moved back into it.
    pub(crate) pod: Option<Vec<usize>>,
}

/// A worker pool.
pub(crate) struct Pool {
    pub(crate) id: usize,
    pub(crate) attrs: PoolAttrs,
    /// How many workers may count as running before no more are woken:
    /// 1 for a bound pool, twice the number of its CPUs for an unbound one.
    pub(crate) target: usize,
    /// An unbound pool's items in flight per CPU of its pod (`spread.rs`);
    /// `None` for bound pools and pools of one CPU.
    pub(crate) spread: Option<Spread>,
    /// Workers running work items and not marked sleeping, blocking or
    /// CPU-intensive. Changed only through `WorkerShared::set_flags` /
    /// `clr_flags`; invariant: equals the number of this pool's workers
    /// whose flags contain none of `worker::NOT_RUNNING`, give or take the
    /// changes in flight, and never negative (each worker's flags change
    /// and count change happen under its `transition` lock; loom model 6).
    pub(crate) nr_running: AtomicIsize,
    /// `PoolInner::nr_waking`, stored under the lock after each change, for
    /// queueing threads deciding without the lock whether to kick.
    nr_waking: AtomicUsize,
    /// Entries queued without the pool lock, admitted by its next holder.
    /// In cache lines of its own: the counts and the pool lock's word
    /// around it change with every worker's step, and sharing a line with
    /// them took it from the queueing thread.
    inbox: CachePadded<Inbox>,
    /// Whether work waits (1) or not (0): the worklist is non-empty or a
    /// worker holds a stash (`batch.rs`). Stored under the lock when that
    /// changes, for the monitor to read without the lock (with the inbox:
    /// `has_pending`).
    pub(crate) nr_pending: AtomicUsize,
    /// Workers take tiny items in batches. Only with a sleep detector: a
    /// stash behind a worker that sleeps unannounced comes back only when
    /// the monitor sees the sleep.
    pub(crate) batching: bool,
    pub(crate) rt: Arc<RtCore>,
    /// The nice value the OS granted (as `i64` bits), `u64::MAX - 1` if it
    /// refused, `u64::MAX` until a worker asked.
    pub(crate) nice_granted: AtomicU64,
    /// The manager's last attempt to create a worker for this pool failed.
    pub(crate) creation_failing: AtomicBool,
    /// Times the watchdog found this pool stalled.
    pub(crate) stalls: AtomicU64,
    /// Items completed (run or discarded) in this pool: the watchdog's
    /// measure of progress. Written under the pool lock, once per item, so
    /// in a cache line of its own: beside `nr_running` and `nr_waking` it
    /// took their line from every queueing thread that reads them.
    pub(crate) completed: CachePadded<AtomicU64>,
    inner: Mutex<PoolInner>,
    /// Every live worker of the pool. A leaf lock apart from the pool lock,
    /// so the monitor's ticks never wait for (or hold up) the worklist.
    workers: Mutex<Vec<Arc<WorkerShared>>>,
    /// Pwq slots whose last handle dropped. A handle may drop while the
    /// pool lock is held, so it only records the slot here (a leaf lock)
    /// and raises `has_released`; the next `admit` frees what it can.
    released: Mutex<Vec<usize>>,
    has_released: AtomicBool,
}

/// The part of a pool behind its lock.
pub(crate) struct PoolInner {
    pub(crate) worklist: VecDeque<Entry>,
    /// Idle workers, most recently idle last (woken first, so the oldest time out).
    pub(crate) idle: Vec<Arc<WorkerShared>>,
    /// Workers woken from idle that have not yet decided to run:
    /// `need_more_worker` counts them as running so a burst of queueing wakes one.
    pub(crate) nr_waking: usize,
    pub(crate) next_worker_id: usize,
    /// Workers created but not yet running their loop.
    pub(crate) nr_starting: usize,
    /// A worker creation request is outstanding at the manager.
    pub(crate) want_worker: bool,
    /// The runtime is shutting down: workers exit once the worklist is empty.
    pub(crate) dying: bool,
    /// A thread runs this dying pool's orphaned work (`drain_orphans`);
    /// work it activates meanwhile is its to run, not another's.
    draining_orphans: bool,
    /// Workers whose batch holds a stash (see `Batch::counted`).
    pub(crate) nr_stashes: usize,
    pwqs: Vec<Option<PwqState>>,
    free_slots: Vec<usize>,
    /// The inbox's previous vector, kept empty for the next swap.
    admitted: Vec<Entry>,
    /// Released pwq slots whose last entry completed: freed at the next
    /// `admit`, not while that entry's `PwqRef` may still be in use.
    freeable: Vec<usize>,
}

impl Pool {
    pub(crate) fn new(rt: Arc<RtCore>, id: usize, attrs: PoolAttrs) -> Arc<Pool> {
        // Bound pools keep one worker running; unbound ones two per CPU of
        // their pod (see README.md: the spare hides detection latency).
        let target = match (&attrs.cpu, &attrs.pod) {
            (Some(_), _) => 1,
            (None, Some(pod)) => pod.len().max(1) * UNBOUND_RUNNERS_PER_CPU,
            (None, None) => attrs.cpus.len().max(1) * UNBOUND_RUNNERS_PER_CPU,
        };
        let batching = rt.detector.kind != crate::Detector::ExplicitOnly;
        let spread = match (&attrs.cpu, &attrs.pod) {
            (Some(_), _) => None,
            (None, Some(pod)) => Spread::new(pod),
            (None, None) => Spread::new(&attrs.cpus),
        };
        Arc::new(Pool {
            id,
            attrs,
            target,
            spread,
            nr_running: AtomicIsize::new(0),
            nr_waking: AtomicUsize::new(0),
            inbox: CachePadded::new(Inbox::default()),
            nr_pending: AtomicUsize::new(0),
            batching,
            rt,
            nice_granted: AtomicU64::new(u64::MAX),
            creation_failing: AtomicBool::new(false),
            stalls: AtomicU64::new(0),
            completed: CachePadded::new(AtomicU64::new(0)),
            workers: Mutex::new(Vec::new()),
            inner: Mutex::new(PoolInner {
                worklist: VecDeque::new(),
                idle: Vec::new(),
                nr_waking: 0,
                next_worker_id: 0,
                nr_starting: 0,
                want_worker: false,
                dying: false,
                draining_orphans: false,
                nr_stashes: 0,
                pwqs: Vec::new(),
                free_slots: Vec::new(),
                admitted: Vec::new(),
                freeable: Vec::new(),
            }),
            released: Mutex::new(Vec::new()),
            has_released: AtomicBool::new(false),
        })
    }

    /// Locks the pool and admits what waits in the inbox, so every holder
    /// sees all work queued before it locked. A panic never happens while
    /// the lock is held (user code runs unlocked, and `tracing` events under
    /// it go through `emit_quietly`), so poisoning is ignored rather than
    /// propagated.
    pub(crate) fn lock(&self) -> MutexGuard<'_, PoolInner> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.admit(&mut inner);
        inner
    }

    /// Moves the inbox's entries to their pwqs: the worklist if `max_active`
    /// allows, else the inactive list. Each gets its queue's flush colour
    /// now, under the lock, so colours reach each pwq in order; `flush`
    /// admits before it advances the colour (`workqueue/flush.rs`). Call
    /// after lowering `nr_running` or `nr_waking` and before deciding that
    /// nothing waits: see README.md, "The inbox".
    pub(crate) fn admit(&self, inner: &mut PoolInner) {
        // Releases before the inbox: a pwq's last entries were pushed
        // before its handle dropped, so an inbox read after the release
        // list holds every one of them (`link.rs`, point 2).
        let released = self.take_released();
        if !self.inbox.is_empty() {
            self.admit_inbox(inner);
        }
        if !released.is_empty() || !inner.freeable.is_empty() {
            self.free_pwqs(inner, released);
        }
    }

    /// The slots whose last handle dropped since the last call.
    fn take_released(&self) -> Vec<usize> {
        if !self.has_released.load(Relaxed) || !self.has_released.swap(false, SeqCst) {
            return Vec::new();
        }
        std::mem::take(&mut *self.released.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// `need_more_worker` for a queueing thread without the lock, given
    /// that work waits: fewer than `target` workers run or are waking.
    pub(crate) fn need_more_worker_unlocked(&self) -> bool {
        (self.nr_running().max(0) as usize) + self.nr_waking.load(SeqCst) < self.target
    }

    /// Whether work waits anywhere: admitted, stashed or in the inbox. For
    /// the monitor, without the lock.
    pub(crate) fn has_pending(&self) -> bool {
        self.nr_pending.load(SeqCst) != 0 || !self.inbox.is_empty()
    }

    /// Counts a worker woken from idle (`+1`) or one that decided (`-1`).
    pub(crate) fn add_waking(&self, inner: &mut PoolInner, delta: isize) {
        inner.nr_waking = inner.nr_waking.checked_add_signed(delta).expect("nr_waking out of range");
        self.nr_waking.store(inner.nr_waking, SeqCst);
    }

    /// Every live worker of the pool (a leaf lock: take no other lock while holding it).
    pub(crate) fn workers(&self) -> MutexGuard<'_, Vec<Arc<WorkerShared>>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a worker that exits.
    pub(crate) fn remove_worker(&self, me: &Arc<WorkerShared>) {
        self.workers().retain(|w| !Arc::ptr_eq(w, me));
    }

    /// The pool's name in dumps and worker names: `0`, `0H`, `u3`.
    pub(crate) fn label(&self) -> String {
        match self.attrs.cpu {
            Some(cpu) if self.attrs.highpri => format!("{cpu}:H"),
            Some(cpu) => format!("{cpu}"),
            None => format!("u{}", self.id),
        }
    }

    pub(crate) fn nr_running(&self) -> isize {
        self.nr_running.load(SeqCst)
    }

    /// Work is pending and fewer than `target` workers run (or are about to).
    pub(crate) fn need_more_worker(&self, inner: &PoolInner) -> bool {
        !inner.worklist.is_empty() && (self.nr_running().max(0) as usize) + inner.nr_waking < self.target
    }

    /// A running worker should take the next item rather than go idle.
    pub(crate) fn keep_working(&self, inner: &PoolInner) -> bool {
        !inner.worklist.is_empty() && (inner.dying || self.nr_running() <= self.target as isize)
    }

    /// Publishes the worklist length; pokes the monitor when work becomes
    /// pending (the store comes first: see the parking protocol in monitor.rs).
    pub(crate) fn sync_pending(&self, inner: &PoolInner) {
        if self.publish_pending(inner) && self.rt.monitor.is_parked() {
            self.rt.monitor.poke();
        }
    }

    /// Publishes whether work waits, for the monitor; returns it.
    fn publish_pending(&self, inner: &PoolInner) -> bool {
        let pending = inner.work_waits();
        // Written only when it changes: the line stays quiet while a busy
        // pool keeps work queued.
        if (self.nr_pending.load(Relaxed) != 0) != pending {
            self.nr_pending.store(usize::from(pending), SeqCst);
        }
        pending
    }

    /// Wakes an idle worker if work needs one; asks the manager for a new
    /// worker if none is idle. Returns the worker to unpark once the lock is
    /// released (waking under the lock would make it block on the lock).
    #[must_use = "the returned worker must be unparked"]
    pub(crate) fn kick(self: &Arc<Self>, inner: &mut PoolInner) -> Option<Arc<WorkerShared>> {
        if !self.need_more_worker(inner) {
            return None;
        }
        match inner.idle.pop() {
            Some(w) => {
                w.mark_woken();
                self.add_waking(inner, 1);
                Some(w)
            }
            None => {
                self.request_worker(inner);
                None
            }
        }
    }

    /// `kick`, then releases the lock and unparks the worker it woke.
    pub(crate) fn kick_and_unlock(self: &Arc<Self>, mut inner: MutexGuard<'_, PoolInner>) {
        let woken = self.kick(&mut inner);
        let orphaned = self.is_orphaned(&inner);
        drop(inner);
        if let Some(w) = woken {
            w.unpark();
        }
        if orphaned {
            self.drain_orphans();
        }
    }

    /// Whether a worker waits on the idle list: waking it costs a futex
    /// call, not a thread creation.
    pub(crate) fn has_idle_worker(&self) -> bool {
        !self.lock().idle.is_empty()
    }

    /// Asks the runtime's manager (on the monitor's thread) to create a worker for this pool.
    pub(crate) fn request_worker(self: &Arc<Self>, inner: &mut PoolInner) {
        if !inner.want_worker && !inner.dying {
            inner.want_worker = true;
            self.rt.manager.request(self.clone());
        }
    }

    /// Whether the manager should create a worker now: no idle worker is in
    /// reserve, so the next wake would have to wait for thread creation.
    pub(crate) fn wants_worker(&self, inner: &PoolInner) -> bool {
        inner.idle.is_empty() && inner.nr_starting == 0 && !inner.dying
    }

    /// Whether a request for an idle reserve still stands when the manager
    /// serves it: [`wants_worker`](Pool::wants_worker), or the pool's only
    /// worker is idle again. A worker that takes a lone item asks for a
    /// reserve and is often idle again before the manager runs; dropping the
    /// request then had it ask again at its next wake-up, so every lone item
    /// woke the manager (a cross-CPU wake-up, 10–13 µs of the item's start
    /// on this VM). The kernel keeps two idle workers per pool for the same
    /// reason (`too_many_workers`).
    pub(crate) fn wants_reserve(&self, inner: &PoolInner) -> bool {
        let alone = self.workers().len() < 2;
        (inner.idle.is_empty() || alone) && inner.nr_starting == 0 && !inner.dying
    }

    /// Puts an admitted entry on its pwq: on the worklist if `max_active`
    /// leaves room, else on the pwq's inactive list. Returns true if it was
    /// parked for a queue-wide limit: the caller must `count_parked` it
    /// before it unlocks the pool.
    #[must_use]
    fn insert(&self, inner: &mut PoolInner, entry: Entry) -> bool {
        let PoolInner { pwqs, worklist, .. } = inner;
        let pwq = pwqs[entry.pwq.slot].as_mut().expect("entry refers to a freed pool workqueue");
        pwq.add_in_flight(entry.color);
        let placed = pwq.place(entry, worklist);
        emit_quietly(|| tracing::trace!(target: "wq", pool = self.id, ?placed, "queue_work"));
        placed == Placement::WaitsForLimit
    }

    /// Counts `n` entries of pwq `slot` parked for the queue-wide limit and
    /// activates them if a slot freed meanwhile (`README.md`, "The
    /// queue-wide limit").
    fn count_parked(&self, inner: &mut PoolInner, slot: usize, n: usize) {
        if inner.pwq(slot).count_waiting(n) {
            self.activate(inner, slot);
        }
    }

    /// Queues `entry` for a caller that checked the refusal under the pool
    /// lock: the timer, and a queueing thread that found the pool needing a
    /// worker woken (`Workqueue::queue_with`).
    pub(crate) fn queue_locked(self: &Arc<Self>, mut inner: MutexGuard<'_, PoolInner>, mut entry: Entry) {
        entry.color = entry.pwq.wq.color.load(SeqCst);
        let slot = entry.pwq.slot;
        if self.insert(&mut inner, entry) {
            self.count_parked(&mut inner, slot, 1);
        }
        let _ = self.publish_pending(&inner);
        // Work waiting behind a running worker needs the monitor (the
        // worker may sleep unannounced); work for an idle pool does not.
        let poke_monitor = self.nr_running() > 0 && self.rt.monitor.is_parked();
        self.kick_and_unlock(inner);
        if poke_monitor {
            self.rt.monitor.poke();
        }
    }

    /// Accounts the finished entries of one record: frees their active
    /// slots, activates the oldest inactive entries into them, counts
    /// stats. Says whether a flush colour retired and whether other pods'
    /// pwqs need activating.
    pub(crate) fn complete(&self, inner: &mut PoolInner, done: &Done) -> Completed {
        let entries = done.entries();
        let pwq = inner.pwq_mut(done.link.slot);
        pwq.release(entries);
        pwq.total += u64::from(done.ran);
        pwq.cpu_time += done.cpu_time;
        pwq.panics += u64::from(done.panicked);
        let retired = pwq.dec_in_flight(done.color, entries);
        if pwq.released && pwq.nr_in_flight == 0 {
            inner.freeable.push(done.link.slot);
        }
        self.completed.store(self.completed.load(Relaxed) + entries as u64, Relaxed);
        self.activate(inner, done.link.slot);
        let other_pods = inner.pwq(done.link.slot).others_may_wait();
        Completed { retired, other_pods }
    }

    /// Moves inactive entries of pwq `slot` to the worklist while it has room.
    pub(crate) fn activate(&self, inner: &mut PoolInner, slot: usize) -> bool {
        let PoolInner { pwqs, worklist, .. } = inner;
        let pwq = pwqs[slot].as_mut().expect("activating a freed pool workqueue");
        let n = pwq.activate_into(worklist);
        if n == 0 {
            return false;
        }
        emit_quietly(|| tracing::trace!(target: "wq", pool = self.id, n, "activate_work"));
        if self.rt.trace.on() {
            let tid = crate::sys::gettid();
            for e in worklist.range(worklist.len() - n..) {
                self.rt.trace.record(TraceKind::Activate, tid, None, Some(&e.pwq.wq.name));
            }
        }
        self.sync_pending(inner);
        true
    }

    /// Creates a pwq of `wq` on this pool; the handle keeps its slot.
    pub(crate) fn alloc_pwq(
        self: &Arc<Self>,
        wq: &Arc<WqCore>,
        max_active: usize,
        frozen: bool,
        rescuer: Option<Arc<Rescuer>>,
        limit: Option<Arc<Limit>>,
    ) -> Arc<PwqHandle> {
        let mut inner = self.lock();
        let slot = inner.free_slots.pop().unwrap_or_else(|| {
            inner.pwqs.push(None);
            inner.pwqs.len() - 1
        });
        let link = Arc::new(PwqLink { pool: self.clone(), slot, wq: wq.clone() });
        let mut state = PwqState::new(max_active, frozen, rescuer, limit);
        state.link = Some(link.clone());
        inner.pwqs[slot] = Some(state);
        Arc::new(PwqHandle::new(link))
    }

    fn release_pwq(&self, slot: usize) {
        self.released.lock().unwrap_or_else(|e| e.into_inner()).push(slot);
        self.has_released.store(true, SeqCst);
        // Freed at once if the pool lock is free: a pool nobody locks again
        // (a CPU a bound queue never used) would otherwise keep the pwq, and
        // what it holds (a rescuer thread), for the runtime's life. Held by
        // this thread or another, its holder's next `admit` frees it.
        let inner = match self.inner.try_lock() {
            Ok(inner) => Some(inner),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(mut inner) = inner {
            self.admit(&mut inner);
        }
    }

    /// Frees the slots of released pwqs with nothing in flight; marks the
    /// others, for `complete` to hand over when their last entry is done
    /// (see `link.rs` for why entries' pointers stay valid until then).
    fn free_pwqs(&self, inner: &mut PoolInner, released: Vec<usize>) {
        for slot in released {
            let pwq = inner.pwq_mut(slot);
            pwq.released = true;
            if pwq.nr_in_flight == 0 {
                inner.freeable.push(slot);
            }
        }
        while let Some(slot) = inner.freeable.pop() {
            let pwq = inner.pwqs[slot].take().expect("freeing a free pwq slot");
            debug_assert!(pwq.nr_in_flight == 0 && pwq.inactive.is_empty(), "freeing a pwq with work in flight");
            inner.free_slots.push(slot);
            // Dropping the pool's count on the link under the lock is safe:
            // the link's own counts are on this pool (which the caller
            // holds) and on its queue's core (no lock in its drop).
            drop(pwq);
        }
    }

    /// Worker `w` stopped counting as running (it sleeps, blocks or turned
    /// CPU-intensive), or the monitor found it asleep: its batch returns to
    /// the worklist, and another worker wakes if work is pending. Called
    /// after `nr_running` dropped; taking the lock here is what makes the
    /// wake-up impossible to lose (see README.md).
    pub(crate) fn worker_stopped_running(self: &Arc<Self>, w: &WorkerShared) -> bool {
        let mut follow_ups = FollowUps::default();
        let mut inner = self.lock();
        self.reclaim(&mut inner, w, &mut follow_ups);
        let woken = self.kick(&mut inner);
        let orphaned = self.is_orphaned(&inner);
        drop(inner);
        follow_ups.run();
        if orphaned {
            self.drain_orphans();
        }
        match woken {
            Some(w) => {
                w.unpark();
                true
            }
            None => false,
        }
    }

    /// Worker creation keeps failing while work waits: ask the rescuer of
    /// every `MEM_RECLAIM` queue with active work here for help.
    pub(crate) fn send_mayday(self: &Arc<Self>) {
        let inner = self.lock();
        if !self.need_more_worker(&inner) {
            return;
        }
        let rescuers: Vec<Arc<Rescuer>> =
            inner.pwqs.iter().flatten().filter(|p| p.nr_active > 0).filter_map(|p| p.rescuer.clone()).collect();
        drop(inner);
        for r in rescuers {
            r.mayday(self.clone());
        }
    }

    /// Takes the worklist entries of queue `wq`, whichever of its pwqs
    /// they belong to (for its rescuer).
    pub(crate) fn take_entries_of(&self, wq: &Arc<WqCore>) -> Vec<Entry> {
        let mut inner = self.lock();
        let (mine, rest): (VecDeque<Entry>, VecDeque<Entry>) =
            std::mem::take(&mut inner.worklist).into_iter().partition(|e| Arc::ptr_eq(&e.pwq.wq, wq));
        inner.worklist = rest;
        self.sync_pending(&inner);
        mine.into()
    }

    /// Activates what pwq `link` can, if it still holds its slot (the link
    /// may outlive it: `WqCore::activate_pods` reaches pwqs by weak links).
    pub(crate) fn activate_link(self: &Arc<Self>, link: &Arc<PwqLink>) {
        let mut inner = self.lock();
        let live = inner.pwqs_slot(link.slot).is_some_and(|p| p.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)));
        if live && self.activate(&mut inner, link.slot) {
            self.kick_and_unlock(inner);
        }
    }

    /// Sets `frozen` on every pwq of a freezable queue here, whether its
    /// queue still has handles or not (a queue dropped with items queued
    /// keeps its pwqs until they ran); on thaw, activates what waited.
    pub(crate) fn set_freezable_frozen(self: &Arc<Self>, frozen: bool) {
        let mut inner = self.lock();
        let mut thawed = false;
        for slot in 0..inner.pwqs.len() {
            let Some(pwq) = inner.pwqs_slot(slot) else { continue };
            if !pwq.is_freezable() {
                continue;
            }
            pwq.frozen = frozen;
            thawed |= !frozen && self.activate(&mut inner, slot);
        }
        if thawed {
            self.kick_and_unlock(inner);
        }
    }

    /// Active (activated, not finished) entries of freezable queues' pwqs.
    pub(crate) fn freezable_active(&self) -> usize {
        let inner = self.lock_settled();
        inner.pwqs.iter().flatten().filter(|p| p.is_freezable()).map(|p| p.nr_active).sum()
    }

    /// Snapshot for stats and dumps.
    pub(crate) fn snapshot(&self) -> PoolSnapshot {
        let inner = self.lock();
        PoolSnapshot {
            workers: self.workers().len(),
            idle: inner.idle.len(),
            running: self.nr_running().max(0) as usize,
            pending: inner.worklist.len(),
        }
    }

    /// Sums the stats of pwq `slot`.
    pub(crate) fn pwq_stats(&self, slot: usize) -> (u64, usize, Duration, u64) {
        let mut inner = self.lock_settled();
        let p = inner.pwq_mut(slot);
        (p.total, p.nr_in_flight, p.cpu_time, p.panics)
    }

    /// Whether every entry of colour `<= color` in pwq `slot` completed.
    pub(crate) fn pwq_flushed(&self, slot: usize, color: u64) -> bool {
        self.lock().pwq_mut(slot).flushed(color)
    }

    /// Counts a granted or refused priority for `dump()`.
    pub(crate) fn record_nice(&self, granted: Option<i32>) {
        let v = granted.map_or(u64::MAX - 1, |n| n as i64 as u64);
        self.nice_granted.store(v, Relaxed);
    }

    /// The nice value workers run at: `Ok(n)`, or `Err(())` if the OS refused.
    pub(crate) fn nice_status(&self) -> Option<Result<i32, ()>> {
        match self.nice_granted.load(Relaxed) {
            u64::MAX => None,
            v if v == u64::MAX - 1 => Some(Err(())),
            v => Some(Ok(v as i64 as i32)),
        }
    }
}

impl PoolInner {
    /// Whether work waits behind the lock: on the worklist, or in a
    /// worker's stash (`batch.rs`).
    pub(crate) fn work_waits(&self) -> bool {
        !self.worklist.is_empty() || self.nr_stashes > 0
    }

    pub(crate) fn pwq(&self, slot: usize) -> &PwqState {
        self.pwqs[slot].as_ref().expect("entry refers to a freed pool workqueue")
    }

    /// The pwq in `slot`, if the slot is allocated.
    pub(crate) fn pwqs_slot(&mut self, slot: usize) -> Option<&mut PwqState> {
        self.pwqs.get_mut(slot).and_then(Option::as_mut)
    }

    pub(crate) fn pwq_mut(&mut self, slot: usize) -> &mut PwqState {
        self.pwqs[slot].as_mut().expect("entry refers to a freed pool workqueue")
    }
}

/// What completing an entry left to do once the pool is unlocked.
pub(crate) struct Completed {
    /// A flush colour retired: wake the queue's flushers.
    pub(crate) retired: bool,
    /// A queue-wide slot freed while other pods' entries wait for one.
    pub(crate) other_pods: bool,
}

/// Counts shown by `dump()` and `Runtime::stats()`.
pub(crate) struct PoolSnapshot {
    pub(crate) workers: usize,
    pub(crate) idle: usize,
    pub(crate) running: usize,
    pub(crate) pending: usize,
}

/// Applies `done` for an entry whose pool is `pool`, notifying flushers of
/// its workqueue if a colour retired.
pub(crate) fn complete_entry(done: Done) {
    let pool = done.link.pool.clone();
    let mut follow_ups = FollowUps::default();
    let mut inner = pool.lock();
    pool.apply(&mut inner, [done], &mut follow_ups);
    pool.kick_and_unlock(inner);
    follow_ups.run();
}
