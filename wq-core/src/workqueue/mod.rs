//! Workqueues: named domains that carry policy.
//!
//! A workqueue owns one pool workqueue per pool it feeds (one per CPU for a
//! bound queue, one for an unbound queue). Queueing picks the pwq, and the
//! pwq applies `max_active`; `flush`, `drain` and `destroy` act on all of
//! them together, as in the kernel.

mod attrs;
mod builder;
mod flush;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::Duration;

use crossbeam_utils::sync::ShardedLock;

pub use attrs::Attrs;
pub(crate) use attrs::{Limit, PwqSet};
pub use builder::WorkqueueBuilder;

use crate::completion::{Completion, SharedItem, SharedJob, Task};
use crate::delayed::DelayedWork;
use crate::pool::{Entry, Job, Outcome, Pool, PwqHandle, PwqLink, PwqRef};
use crate::rescuer::Rescuer;
use crate::runtime::Runtime;
use crate::stats::WorkqueueStats;
use crate::trace::TraceKind;
use crate::work::{NotQueued, Work, WorkShared};
use crate::{worker, Error};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

bitflags::bitflags! {
    /// Workqueue flags, with the kernel's meaning (`WQ_*` in `workqueue.rst`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Flags: u32 {
        /// Work goes to the highpri pools: separate workers at a higher OS
        /// priority, never waiting behind normal work.
        const HIGHPRI = 1 << 0;
        /// Work items do not take part in concurrency management: while one
        /// runs, other items on its pool start anyway.
        const CPU_INTENSIVE = 1 << 1;
        /// Work goes to unbound pools whose workers are not pinned to a CPU.
        const UNBOUND = 1 << 2;
        /// [`Runtime::freeze`](crate::Runtime::freeze) stops the queue's
        /// items from starting until [`Runtime::thaw`](crate::Runtime::thaw).
        const FREEZABLE = 1 << 3;
        /// The queue may be needed for forward progress under resource
        /// pressure (the kernel's memory reclaim): it reserves a rescuer
        /// thread that runs its items when its pools cannot get workers.
        const MEM_RECLAIM = 1 << 4;
        /// The kernel's `WQ_POWER_EFFICIENT`: unbound when the system
        /// prefers power efficiency, bound otherwise (bound here).
        const POWER_EFFICIENT = 1 << 5;
    }
}

/// The default `max_active` (the kernel's `WQ_DFL_ACTIVE`).
pub const DEFAULT_MAX_ACTIVE: u32 = 1024;
/// The largest `max_active` accepted (the kernel's `WQ_MAX_ACTIVE`).
pub const MAX_ACTIVE_LIMIT: u32 = 2048;
/// The longest workqueue name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Counters of one workqueue that are not kept per pwq.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) cm_wakeups: AtomicU64,
    pub(crate) cpu_hogs: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) mayday: AtomicU64,
    pub(crate) rescued: AtomicU64,
}

/// The part of a workqueue that queued entries reach (through their pwq
/// link); it does not keep the runtime alive.
pub(crate) struct WqCore {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) flags: Flags,
    pub(crate) ordered: bool,
    pub(crate) max_active: u32,
    /// Current flush colour: entries carry the colour they were queued in;
    /// `flush` bumps it and waits for the older colours.
    pub(crate) color: AtomicU64,
    pub(crate) counters: Counters,
    /// An unbound queue's `max_active`, shared by all its pods.
    pub(crate) limit: Option<Arc<Limit>>,
    /// The pwqs of the current set and of replaced sets, oldest first, for
    /// activating other pods when a queue-wide slot frees. Weak links, not
    /// handles: a pwq stays reachable while its pool holds it (until its
    /// entries ran), also after the queue's last handle went.
    pods: Mutex<Vec<Weak<PwqLink>>>,
    /// Stats of pwqs retired by `apply_attrs` and since drained.
    retired_stats: Mutex<(u64, Duration, u64)>,
    /// `drain` calls in progress; while non-zero only chained work may queue.
    pub(crate) draining: AtomicUsize,
    /// Held shared by `mod_delayed` from its refusal check until the
    /// instance it took back is queued or armed again; `drain` takes it
    /// exclusively once after raising `draining`. So a re-arm is either
    /// refused before it changes anything or completes, and the drain then
    /// waits for what it queued (or `destroy` refuses what it armed): a
    /// refused `mod_delayed` never loses the pending instance it replaced.
    pub(crate) rearming: RwLock<()>,
    pub(crate) destroyed: AtomicBool,
    /// One of the process-wide `system_*` queues, which `destroy` refuses.
    pub(crate) system: AtomicBool,
    flushers: AtomicUsize,
    flush_lock: Mutex<()>,
    flush_cv: Condvar,
}

impl WqCore {
    pub(crate) fn new(id: u64, name: String, flags: Flags, ordered: bool, max_active: u32, unbound: bool) -> WqCore {
        WqCore {
            id,
            name,
            flags,
            ordered,
            max_active,
            color: AtomicU64::new(0),
            counters: Counters::default(),
            limit: unbound.then(|| Arc::new(Limit::new(max_active as usize))),
            pods: Mutex::new(Vec::new()),
            retired_stats: Mutex::new((0, Duration::ZERO, 0)),
            draining: AtomicUsize::new(0),
            rearming: RwLock::new(()),
            destroyed: AtomicBool::new(false),
            system: AtomicBool::new(false),
            flushers: AtomicUsize::new(0),
            flush_lock: Mutex::new(()),
            flush_cv: Condvar::new(),
        }
    }

    /// Adds the pwqs of a new set to those a freed queue-wide slot
    /// activates. A replaced set's pwqs stay until their pool frees them
    /// (once drained): their parked entries still wait for a slot, which
    /// any pod may free.
    pub(crate) fn add_pods(&self, set: &PwqSet) {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.retain(|pod| pod.strong_count() > 0);
        pods.extend(set.links.iter().map(|h| Arc::downgrade(h.link())));
    }

    /// A queue-wide active slot freed: let the pods' waiting entries in.
    pub(crate) fn activate_pods(&self) {
        let pods: Vec<Arc<PwqLink>> =
            self.pods.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect();
        for link in pods {
            link.pool.activate_link(&link);
        }
    }

    /// Whether a `flush` or `drain` of this queue is waiting. A flusher
    /// raises the count before it settles deferred accounting, so a worker
    /// that reads it after deferring a record knows whether to apply it now.
    pub(crate) fn has_flushers(&self) -> bool {
        self.flushers.load(SeqCst) > 0
    }

    /// A flush colour retired somewhere: wake flushers, if any.
    pub(crate) fn notify_flushers(&self) {
        if self.flushers.load(SeqCst) > 0 {
            let _guard = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.flush_cv.notify_all();
        }
    }

    /// Why queueing from the calling thread is refused right now, if it is.
    /// Called under the target pool's inbox lock or its pool lock (see
    /// `Workqueue::queue_with`), so `drain` and `destroy` cannot slip in
    /// between the check and the push.
    fn refusal(&self, from_timer: bool) -> Option<Error> {
        if self.destroyed.load(SeqCst) {
            return Some(Error::Destroyed { queue: self.name.clone() });
        }
        if !from_timer && self.draining.load(SeqCst) > 0 && worker::current_wq_id() != Some(self.id) {
            return Some(Error::Draining { queue: self.name.clone() });
        }
        None
    }
}

pub(crate) struct WqShared {
    pub(crate) core: Arc<WqCore>,
    pub(crate) rt: Runtime,
    /// Bound queues: one pwq per runtime CPU. Unbound: one per pod. Read on
    /// every queueing of an unbound queue (a sharded lock keeps that
    /// cheap); replaced by `apply_attrs`.
    pwqs: ShardedLock<Arc<PwqSet>>,
    /// The pwqs of a bound or ordered queue, which never change
    /// (`apply_attrs` refuses both): queueing reads them without the lock's
    /// two atomic operations. The same set as `pwqs` holds.
    fixed: Option<Arc<PwqSet>>,
    /// Pwqs replaced by `apply_attrs` that may still have work in flight.
    old: Mutex<Vec<Arc<PwqHandle>>>,
    attrs: Mutex<Option<Attrs>>,
    /// Ids of delayed work items whose timer is armed to queue here.
    pub(crate) armed: Mutex<BTreeSet<u64>>,
    /// The rescuer of a `MEM_RECLAIM` queue.
    pub(crate) rescuer: Option<Arc<Rescuer>>,
}

impl WqShared {
    pub(crate) fn new(
        core: Arc<WqCore>,
        rt: Runtime,
        set: PwqSet,
        rescuer: Option<Arc<Rescuer>>,
        attrs: Option<Attrs>,
    ) -> WqShared {
        let set = Arc::new(set);
        WqShared {
            fixed: (attrs.is_none() || core.ordered).then(|| set.clone()),
            core,
            rt,
            pwqs: ShardedLock::new(set),
            old: Mutex::new(Vec::new()),
            attrs: Mutex::new(attrs),
            armed: Mutex::default(),
            rescuer,
        }
    }

    pub(crate) fn set(&self) -> Arc<PwqSet> {
        self.pwqs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for WqShared {
    fn drop(&mut self) {
        if self.rt.shared.core.forked() {
            // The names are the parent's; their lock may have been held at the fork.
            return;
        }
        self.rt.shared.core.wq_names.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.core.id);
    }
}

/// A named workqueue: the domain that carries policy (priority, CPU
/// intensity, ordering, `max_active`) and that can be flushed, drained and
/// destroyed as a group.
///
/// Cloning gives another handle to the same queue.
///
/// ```
/// use wq_core::{Flags, Workqueue};
///
/// let wq = Workqueue::builder("hashing").flags(Flags::CPU_INTENSIVE).max_active(4).build()?;
/// let sum = wq.submit(|| (1..=10u64).sum::<u64>())?;
/// assert_eq!(sum.wait().unwrap(), 55);
/// wq.flush()?;
/// # Ok::<(), wq_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Workqueue {
    pub(crate) shared: Arc<WqShared>,
}

impl Workqueue {
    /// Starts building a workqueue on the global runtime.
    pub fn builder(name: &str) -> WorkqueueBuilder {
        WorkqueueBuilder::new(None, name)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.shared.core.name
    }

    /// The queue's flags (`ordered` queues show `UNBOUND`).
    pub fn flags(&self) -> Flags {
        self.shared.core.flags
    }

    /// Whether the queue runs its items one at a time in queueing order.
    pub fn is_ordered(&self) -> bool {
        self.shared.core.ordered
    }

    /// The effective `max_active`: per CPU for bound queues, for the whole
    /// queue for unbound ones.
    pub fn max_active(&self) -> u32 {
        self.shared.core.max_active
    }

    /// The runtime the queue belongs to.
    pub fn runtime(&self) -> &Runtime {
        &self.shared.rt
    }

    /// Whether the calling thread is running one of this queue's items:
    /// there, [`flush`](Workqueue::flush), [`drain`](Workqueue::drain) and
    /// [`destroy`](Workqueue::destroy) of this queue would wait for
    /// themselves, and return [`Error::WouldDeadlock`] instead. For code that
    /// waits for the queue in other ways (on another thread, say).
    pub fn is_current(&self) -> bool {
        worker::current_wq_id() == Some(self.shared.core.id)
    }

    /// Whether [`destroy`](Workqueue::destroy) completed on this queue.
    pub fn is_destroyed(&self) -> bool {
        self.shared.core.destroyed.load(SeqCst)
    }

    /// Queues `work` on the pool of the CPU the caller runs on. Returns
    /// `false` if it was already pending (nothing changes then).
    ///
    /// Also returns `false` if the queue refuses work (destroyed, or
    /// draining and the caller is not one of its items); the refusal is
    /// logged and counted in [`WorkqueueStats::refused`]. Use
    /// [`try_queue`](Workqueue::try_queue) to get the reason as a value.
    pub fn queue(&self, work: &Work) -> bool {
        self.or_refused(self.try_queue(work))
    }

    /// Like [`queue`](Workqueue::queue), with refusals as errors.
    ///
    /// # Errors
    /// [`Error::Destroyed`] or [`Error::Draining`]; [`Error::Forked`] in a
    /// child made by `fork` after the runtime was built.
    pub fn try_queue(&self, work: &Work) -> Result<bool, Error> {
        let slot = self.shared.rt.local_slot();
        self.queue_work(&work.shared, slot)
    }

    /// Queues `work` on the pool of CPU `cpu`. Returns `Ok(false)` if it was
    /// already pending.
    ///
    /// # Errors
    /// [`Error::InvalidCpu`] if the runtime does not manage `cpu`; the
    /// refusals of [`try_queue`](Workqueue::try_queue).
    pub fn queue_on(&self, cpu: usize, work: &Work) -> Result<bool, Error> {
        let slot = self.shared.rt.slot_of(cpu)?;
        self.queue_work(&work.shared, slot)
    }

    /// Arms `dwork` to be queued here after `delay`. Returns `false` if it
    /// was already pending (its deadline is left alone; see
    /// [`mod_delayed`](Workqueue::mod_delayed)) or if the queue refused it
    /// (logged and counted, as for [`queue`](Workqueue::queue)).
    pub fn queue_delayed(&self, dwork: &DelayedWork, delay: Duration) -> bool {
        self.or_refused(self.try_queue_delayed(dwork, delay))
    }

    /// Like [`queue_delayed`](Workqueue::queue_delayed), with refusals as errors.
    ///
    /// # Errors
    /// [`Error::DelayTooLong`], [`Error::Destroyed`], [`Error::Draining`],
    /// [`Error::Forked`].
    pub fn try_queue_delayed(&self, dwork: &DelayedWork, delay: Duration) -> Result<bool, Error> {
        dwork.queue_on_wq(self, None, delay, false)
    }

    /// Like [`try_queue_delayed`](Workqueue::try_queue_delayed), queueing on
    /// CPU `cpu` when the timer fires.
    ///
    /// # Errors
    /// As `try_queue_delayed`, and [`Error::InvalidCpu`].
    pub fn queue_delayed_on(&self, cpu: usize, dwork: &DelayedWork, delay: Duration) -> Result<bool, Error> {
        let slot = self.shared.rt.slot_of(cpu)?;
        dwork.queue_on_wq(self, Some(slot), delay, false)
    }

    /// Queues `dwork` after `delay` whatever its state: a pending item
    /// (armed or already on a worklist) is taken back and re-armed. Returns
    /// whether it was pending before.
    ///
    /// # Errors
    /// As [`try_queue_delayed`](Workqueue::try_queue_delayed). A refused
    /// call changes nothing: a pending instance stays where it was. (A
    /// `drain` or `destroy` that begins during the call lets it finish.)
    pub fn mod_delayed(&self, dwork: &DelayedWork, delay: Duration) -> Result<bool, Error> {
        dwork.queue_on_wq(self, None, delay, true)
    }

    /// Runs `f` once on this queue and returns a handle to its result.
    ///
    /// # Errors
    /// [`Error::Destroyed`], [`Error::Draining`] or [`Error::Forked`]; `f` is dropped.
    pub fn submit<T, F>(&self, f: F) -> Result<Completion<T>, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (task, completion) = Task::split(f, crate::recycle::pays_off_on(self));
        self.queue_job(Job::Shared(SharedJob::new(task)), self.shared.rt.local_slot())?;
        Ok(completion)
    }

    /// Runs `f` once on this queue without a handle: the cheapest way to
    /// queue a closure (one allocation, the boxed `f`; an executor's polls
    /// have [`execute_runnable`](Workqueue::execute_runnable)). A panic in `f` is
    /// caught, counted in [`WorkqueueStats::panics`] and otherwise ignored.
    ///
    /// # Errors
    /// [`Error::Destroyed`], [`Error::Draining`] or [`Error::Forked`]; `f` is dropped.
    pub fn execute(&self, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        let job = Job::Once(Box::new(move || Outcome::of_call(f)));
        self.queue_job(job, self.shared.rt.local_slot())
    }

    /// Runs `item` once on this queue without allocating: the item is its
    /// own entry (see [`SharedItem`]).
    ///
    /// # Errors
    /// [`Error::Destroyed`], [`Error::Draining`] or [`Error::Forked`]; `item` is discarded
    /// ([`SharedItem::discard`]) before this returns.
    pub fn execute_shared(&self, item: Arc<impl SharedItem>) -> Result<(), Error> {
        let job = Job::Shared(SharedJob::new(item));
        self.queue_job(job, self.shared.rt.local_slot())
    }

    /// Queues one poll of an `async-task` task on this queue: the schedule
    /// function of an executor whose polls are work items (wq-futures is
    /// one). Unlike [`execute`](Workqueue::execute) it allocates nothing:
    /// the `Runnable` is the entry. A panic that unwinds out of the poll is
    /// caught and counted in [`WorkqueueStats::panics`].
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use wq_core::Workqueue;
    ///
    /// let wq = Workqueue::builder("polls").build()?;
    /// let (tx, rx) = mpsc::channel();
    /// let queue = wq.clone();
    /// let schedule = move |runnable| {
    ///     // A refused poll is dropped, which cancels the task.
    ///     let _ = queue.execute_runnable(runnable);
    /// };
    /// let (runnable, task) = async_task::spawn(async move { tx.send(6 * 7).unwrap() }, schedule);
    /// task.detach();
    /// wq.execute_runnable(runnable)?;
    /// assert_eq!(rx.recv().unwrap(), 42);
    /// # Ok::<(), wq_core::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Destroyed`], [`Error::Draining`] or [`Error::Forked`]; `runnable` is dropped
    /// before this returns, so the task is cancelled.
    pub fn execute_runnable(&self, runnable: async_task::Runnable) -> Result<(), Error> {
        self.queue_job(Job::Poll(runnable), self.shared.rt.local_slot())
    }

    /// Waits for every work item queued before the call to finish. Items
    /// queued meanwhile (also by those items) are not waited for.
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] when called from one of this queue's items;
    /// [`Error::Forked`].
    pub fn flush(&self) -> Result<(), Error> {
        self.check_not_forked()?;
        self.check_not_own_item("flush")?;
        self.flush_colors();
        Ok(())
    }

    /// Flushes until the queue is empty. Meanwhile only the queue's own
    /// items may queue more here (chaining); others get [`Error::Draining`].
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] when called from one of this queue's items;
    /// [`Error::Forked`].
    pub fn drain(&self) -> Result<(), Error> {
        self.check_not_forked()?;
        self.check_not_own_item("drain")?;
        self.drain_inner();
        Ok(())
    }

    /// Drains the queue, then refuses all further work. Queued work runs
    /// first; nothing is dropped.
    ///
    /// # Errors
    /// [`Error::DelayedWorkArmed`] if delayed work is armed to fire on this
    /// queue (the queue stays usable; cancel those items first);
    /// [`Error::WouldDeadlock`] when called from one of its items;
    /// [`Error::SystemQueue`] for the process-wide `system_*` queues;
    /// [`Error::Forked`].
    pub fn destroy(&self) -> Result<(), Error> {
        if self.shared.core.system.load(SeqCst) {
            return Err(Error::SystemQueue { queue: self.name().to_owned() });
        }
        self.check_not_forked()?;
        self.check_not_own_item("destroy")?;
        self.check_none_armed()?;
        // Refuse other work from here to the end, not only while each
        // drain runs: a thread that queued between two drains could
        // otherwise push after the final check.
        let core = &self.shared.core;
        core.draining.fetch_add(1, SeqCst);
        let result = self.destroy_drained();
        core.draining.fetch_sub(1, SeqCst);
        result
    }

    /// `destroy`'s loop: drain, then set `destroyed` once nothing is left.
    fn destroy_drained(&self) -> Result<(), Error> {
        loop {
            self.drain_inner();
            let armed = self.shared.armed.lock().unwrap_or_else(|e| e.into_inner());
            if !armed.is_empty() {
                let items = armed.iter().copied().collect();
                return Err(Error::DelayedWorkArmed { queue: self.name().to_owned(), items });
            }
            // The freeze lock keeps `apply_attrs` from installing a set
            // whose pwqs this check would miss: a chained item could queue
            // there, and start after `destroy` returned. It checks
            // `destroyed` under the same lock.
            let _no_new_pwqs = self.shared.rt.freeze_state();
            // Chained work queued since the drain has pushed once this
            // returns, into an inbox that locking admits. With every
            // pool of the queue locked, the timer cannot queue between the
            // emptiness check and the flag; later queueing sees `draining`.
            self.fence_queueing();
            let links = self.links();
            // Each pool locked once (a pwq that `apply_attrs` replaced may
            // share its pool with a current one), in address order, so that
            // two `destroy`s never lock the same pools in opposite orders.
            let mut pools: Vec<&Arc<Pool>> = links.iter().map(|l| &l.pool).collect();
            pools.sort_by_key(|p| Arc::as_ptr(p));
            pools.dedup_by_key(|p| Arc::as_ptr(p));
            let guards: Vec<_> = pools.iter().map(|p| (Arc::as_ptr(p), p.lock())).collect();
            let empty = links.iter().all(|l| {
                let (_, inner) = guards.iter().find(|(p, _)| *p == Arc::as_ptr(&l.pool)).expect("every pool is locked");
                inner.pwq(l.slot).nr_in_flight == 0
            });
            if empty {
                self.shared.core.destroyed.store(true, SeqCst);
                return Ok(());
            }
        }
    }

    /// The queue's counters: the `wq_monitor.py` columns.
    ///
    /// In a child made by `fork` after the runtime was built, `total`,
    /// `in_flight`, `cpu_time` and `panics` read 0: they are kept with the
    /// pools, which are the parent's, under locks a parent's thread may
    /// have held at the fork.
    pub fn stats(&self) -> WorkqueueStats {
        let c = &self.shared.core.counters;
        let mut s = WorkqueueStats {
            cpu_hogs: c.cpu_hogs.load(Relaxed),
            cm_wakeups: c.cm_wakeups.load(Relaxed),
            mayday: c.mayday.load(Relaxed),
            rescued: c.rescued.load(Relaxed),
            refused: c.refused.load(Relaxed),
            ..WorkqueueStats::default()
        };
        if self.shared.rt.shared.core.forked() {
            return s;
        }
        let (links, retired) = self.links_and_retired();
        (s.total, s.cpu_time, s.panics) = retired;
        for link in links {
            let (total, in_flight, cpu_time, panics) = link.pool.pwq_stats(link.slot);
            s.total += total;
            s.in_flight += in_flight as u64;
            s.cpu_time += cpu_time;
            s.panics += panics;
        }
        s
    }

    fn or_refused(&self, r: Result<bool, Error>) -> bool {
        r.unwrap_or_else(|err| {
            tracing::error!(target: "wq", queue = %self.name(), %err, "work item refused");
            false
        })
    }

    /// [`Error::Forked`] in a child made by `fork` after the runtime was built.
    pub(crate) fn check_not_forked(&self) -> Result<(), Error> {
        self.shared.rt.shared.core.check_not_forked()
    }

    fn check_not_own_item(&self, what: &str) -> Result<(), Error> {
        if self.is_current() {
            return Err(Error::WouldDeadlock(format!(
                "Workqueue::{what} of {:?} called from one of its own work items",
                self.name()
            )));
        }
        Ok(())
    }

    fn check_none_armed(&self) -> Result<(), Error> {
        let armed = self.shared.armed.lock().unwrap_or_else(|e| e.into_inner());
        if armed.is_empty() {
            return Ok(());
        }
        Err(Error::DelayedWorkArmed { queue: self.name().to_owned(), items: armed.iter().copied().collect() })
    }

    /// Marks `work` pending and queues it on the pwq of `slot`.
    fn queue_work(&self, work: &Arc<WorkShared>, slot: usize) -> Result<bool, Error> {
        self.queue_with(slot, false, || mark_pending(work))
    }

    /// Queues an instance already marked pending (delayed work firing).
    pub(crate) fn queue_pending(&self, work: &Arc<WorkShared>, gen: u64, slot: Option<usize>) -> Result<(), Error> {
        let slot = slot.unwrap_or_else(|| self.shared.rt.local_slot());
        self.queue_with(slot, true, || Some(Job::Work { work: work.clone(), gen })).map(drop)
    }

    /// Marks `work` pending and queues it now (a zero delay), on `slot` or
    /// the caller's CPU. `rearm`: a `mod_delayed` past its refusal check
    /// (see `refusal_for_arming`).
    pub(crate) fn queue_now(&self, work: &Arc<WorkShared>, slot: Option<usize>, rearm: bool) -> Result<bool, Error> {
        let slot = slot.unwrap_or_else(|| self.shared.rt.local_slot());
        self.queue_with(slot, rearm, || mark_pending(work))
    }

    /// Puts `job` on the pwq for CPU slot `slot`, unless the queue refuses.
    fn queue_job(&self, job: Job, slot: usize) -> Result<(), Error> {
        self.queue_with(slot, false, || Some(job)).map(drop)
    }

    /// Queues what `make` gives on the pwq for CPU slot `slot`. `make` runs
    /// after the refusal check, so a work item is marked pending only when
    /// it is sure to be queued: nobody ever sees a pending state that a
    /// refusal then takes back. `Ok(false)`: `make` gave nothing (the item
    /// was pending already).
    ///
    /// Behind running workers, the entry goes to the pool's inbox without
    /// the pool lock. The check and the push happen under the inbox's leaf
    /// lock, which `drain` and `destroy` take once (`fence_queueing`) after
    /// raising `draining`: either the check sees them, or they see the
    /// entry. Two cases check and insert under the pool lock instead, which
    /// `flush`, `drain` and `destroy` take after raising `draining` (and
    /// `destroy` holds while it decides): the timer (which `draining` does
    /// not refuse), and a pool that needs a worker woken, where the kick
    /// takes the lock anyway and the inbox would only lengthen the wake-up.
    fn queue_with(&self, slot: usize, from_timer: bool, make: impl FnOnce() -> Option<Job>) -> Result<bool, Error> {
        if let Err(err) = self.check_not_forked() {
            self.shared.core.counters.refused.fetch_add(1, Relaxed);
            return Err(err);
        }
        // An unbound queue's set may be replaced; holding the read lock
        // while queueing keeps `apply_attrs` from retiring it meanwhile.
        let guard;
        let set: &PwqSet = match &self.shared.fixed {
            Some(set) => set,
            None => {
                guard = self.shared.pwqs.read().unwrap_or_else(|e| e.into_inner());
                &guard
            }
        };
        let link = set.for_slot(slot);
        let pool = &link.pool;
        if from_timer || pool.need_more_worker_unlocked() {
            let inner = pool.lock();
            if let Some(err) = self.refused(from_timer) {
                drop(inner);
                // `make` (and whatever it captured) is dropped unlocked.
                drop(make);
                return Err(err);
            }
            let Some(job) = make() else { return Ok(false) };
            self.trace_queue(pool);
            pool.queue_locked(inner, Entry { pwq: PwqRef::new(link.link()), color: 0, job });
        } else {
            let mut make = Some(make);
            let pwq = PwqRef::new(link.link());
            let pushed = pool.push_inbox(|| {
                if let Some(err) = self.refused(false) {
                    return Err(err);
                }
                let make = make.take().expect("called once");
                let entry = make().map(|job| Entry { pwq, color: 0, job });
                if entry.is_some() {
                    self.trace_queue(pool);
                }
                Ok(entry)
            });
            // A refused `make` (and whatever it captured) is dropped here,
            // with the inbox unlocked.
            drop(make);
            match pushed? {
                None => return Ok(false),
                Some(true) => pool.kick_for_inbox(),
                Some(false) => {}
            }
        }
        Ok(true)
    }

    /// Records the queueing on the timeline, before a worker can see the
    /// entry (under the lock it takes the entry with), so its start comes after.
    fn trace_queue(&self, pool: &Pool) {
        let trace = &pool.rt.trace;
        if trace.on() {
            trace.record(TraceKind::Queue, crate::sys::gettid(), None, Some(self.name()));
        }
    }

    /// Why queueing is refused, counted as a refusal.
    fn refused(&self, from_timer: bool) -> Option<Error> {
        let err = self.shared.core.refusal(from_timer)?;
        self.shared.core.counters.refused.fetch_add(1, Relaxed);
        Some(err)
    }

    /// Every pwq that may have work of this queue: the current ones and
    /// those `apply_attrs` replaced (dropped once drained, their stats kept).
    pub(crate) fn links(&self) -> Vec<Arc<PwqHandle>> {
        self.links_and_retired().0
    }

    /// `links`, and the counts of the replaced pwqs dropped so far, read
    /// under the lock that moves a drained pwq's counts into
    /// `retired_stats`: read apart, a pwq dropped in between was counted in
    /// neither, and `stats().total` went backwards.
    fn links_and_retired(&self) -> (Vec<Arc<PwqHandle>>, (u64, Duration, u64)) {
        let mut old = self.shared.old.lock().unwrap_or_else(|e| e.into_inner());
        self.drop_drained(&mut old);
        let retired = *self.shared.core.retired_stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut links = self.shared.set().links.clone();
        links.extend(old.iter().cloned());
        (links, retired)
    }

    /// Drops the handles of replaced pwqs with nothing in flight, keeping
    /// their stats.
    fn drop_drained(&self, old: &mut Vec<Arc<PwqHandle>>) {
        old.retain(|l| {
            let (total, in_flight, cpu_time, panics) = l.pool.pwq_stats(l.slot);
            if in_flight > 0 {
                return true;
            }
            let mut r = self.shared.core.retired_stats.lock().unwrap_or_else(|e| e.into_inner());
            r.0 += total;
            r.1 += cpu_time;
            r.2 += panics;
            false
        });
    }

    /// The attributes of an unbound queue (`None` for a bound one).
    pub fn attrs(&self) -> Option<Attrs> {
        self.shared.attrs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes an unbound queue's attributes: its nice value, CPUs, affinity
    /// scope and strictness (the kernel's `apply_workqueue_attrs`). New items
    /// go to the new pods' pools; items already queued finish where they are.
    ///
    /// # Errors
    /// [`Error::ConflictingFlags`] for a bound or an ordered queue (more than
    /// one pod would break its ordering, as in the kernel);
    /// [`Error::InvalidAttrs`] or [`Error::InvalidCpu`] for bad attributes;
    /// [`Error::InvalidConfig`] for attributes that need a pool the runtime's
    /// `max_workers` leaves no worker for; [`Error::Destroyed`];
    /// [`Error::Forked`].
    pub fn apply_attrs(&self, attrs: Attrs) -> Result<(), Error> {
        let core = &self.shared.core;
        if !core.flags.contains(Flags::UNBOUND) {
            return Err(Error::ConflictingFlags("attributes apply to unbound queues only"));
        }
        if core.ordered {
            return Err(Error::ConflictingFlags("an ordered queue keeps its attributes (one pwq keeps the order)"));
        }
        self.check_not_forked()?;
        let rt = &self.shared.rt;
        // Held until the new set is in place, as when a queue is created:
        // a `freeze` or `thaw` either comes first, and the set is built in
        // its state, or comes after, and finds the set among the queue's
        // links. Read once without the lock, a thaw could slip in between
        // and leave the new pwqs frozen for good. `destroy` makes its last
        // check under it too, so a set is never installed unseen by it.
        let frozen = rt.freeze_state();
        if self.is_destroyed() {
            return Err(Error::Destroyed { queue: core.name.clone() });
        }
        let set = rt.pwq_set(core, Some(&attrs), self.shared.rescuer.as_ref(), *frozen)?;
        let mut old = self.shared.old.lock().unwrap_or_else(|e| e.into_inner());
        // Drained pwqs go first, so the pods a freed slot activates (which
        // include every replaced pwq still held) do not pile up.
        self.drop_drained(&mut old);
        core.add_pods(&set);
        let previous =
            std::mem::replace(&mut *self.shared.pwqs.write().unwrap_or_else(|e| e.into_inner()), Arc::new(set));
        old.extend(previous.links.iter().cloned());
        drop(old);
        // Under the same lock as the set, so two racing calls leave the
        // attributes of the set that stays.
        *self.shared.attrs.lock().unwrap_or_else(|e| e.into_inner()) = Some(attrs);
        drop(frozen);
        // Entries waiting on the old pwqs for the queue-wide limit still get in.
        core.activate_pods();
        Ok(())
    }

    /// Whether `destroy` should refuse because of armed delayed work; used
    /// by `DelayedWork` under the `armed` lock to keep the two in step.
    /// `rearm`: a `mod_delayed` past its refusal check, made under
    /// `WqCore::rearming`. A drain that began since waits for it and does
    /// not refuse it (as it does not refuse the timer); only a destroyed
    /// queue does, which cannot happen while that guard is held.
    pub(crate) fn refusal_for_arming(&self, rearm: bool) -> Option<Error> {
        self.shared.core.refusal(rearm)
    }
}

/// `queue`'s state transition: a new pending instance, unless one exists
/// (or a `cancel_sync` holds the item).
fn mark_pending(work: &Arc<WorkShared>) -> Option<Job> {
    match work.mark_pending() {
        Ok(gen) => Some(Job::Work { work: work.clone(), gen }),
        Err(NotQueued::Pending | NotQueued::Disabled) => None,
    }
}

impl fmt::Debug for Workqueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workqueue")
            .field("name", &self.name())
            .field("flags", &self.flags())
            .field("max_active", &self.max_active())
            .field("ordered", &self.is_ordered())
            .finish()
    }
}

impl PartialEq for Workqueue {
    fn eq(&self, other: &Workqueue) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Workqueue {}
