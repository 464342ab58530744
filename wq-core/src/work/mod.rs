//! Reusable work items with the kernel's semantics.
//!
//! A [`Work`] is queued, runs, and can be queued again, like a kernel
//! `work_struct`: queueing a pending item is a no-op, an item never runs on
//! two workers at once, and `cancel_sync`/`flush` wait for it precisely.
//! The protocol is in `README.md` beside this file.

mod state;

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::pool::{Done, Outcome, PwqRef};
use crate::worker;
use crate::Error;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};

pub(crate) use state::{
    gen_of, gen_reached, retired_at_finish, Claim, Ended, NotQueued, State, PENDING, RUNNING, WAITERS,
};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A queued instance parked for the worker that runs the item right now,
/// or in transit between dequeue and run.
pub(crate) struct Parked {
    pub(crate) link: PwqRef,
    pub(crate) color: u64,
    pub(crate) gen: u64,
}

impl Parked {
    /// The accounting of an instance that will not run.
    pub(crate) fn discarded(self) -> Done {
        Done::new(self.link, self.color, Outcome::Skipped, Default::default())
    }
}

/// The shared part of a work item.
pub(crate) struct WorkShared {
    pub(crate) id: u64,
    pub(crate) state: State,
    /// `sys::forks()` when an instance was last marked pending. In a child
    /// made by `fork` after that, the instance is the parent runtime's and
    /// no thread here runs or ends it: waits for it are refused. Beside
    /// `state`, so the store after its CAS dirties no other line.
    fork_generation: AtomicU64,
    func: Box<dyn Fn() + Send + Sync>,
    /// Instances dequeued while the item ran elsewhere (see `HANDOFF`).
    parked: Mutex<Vec<Parked>>,
    /// The highest generation that finished running or was cancelled, and
    /// the count of finished runs (`RUNNING` cleared or handed to the next
    /// instance): what `flush` waits on (see `Ended`).
    ended: Ended,
    wait_lock: Mutex<()>,
    wait_cv: Condvar,
}

impl WorkShared {
    pub(crate) fn new(func: Box<dyn Fn() + Send + Sync>) -> WorkShared {
        WorkShared {
            id: NEXT_ID.fetch_add(1, SeqCst),
            state: State::new(),
            fork_generation: AtomicU64::new(crate::sys::forks()),
            func,
            parked: Mutex::new(Vec::new()),
            ended: Ended::new(),
            wait_lock: Mutex::new(()),
            wait_cv: Condvar::new(),
        }
    }

    /// Marks an instance pending (`State::try_mark_pending`), noting the
    /// fork generation it belongs to.
    pub(crate) fn mark_pending(&self) -> Result<u64, NotQueued> {
        let gen = self.state.try_mark_pending()?;
        self.fork_generation.store(crate::sys::forks(), Relaxed);
        Ok(gen)
    }

    /// [`Error::Forked`] if an instance is pending or running that was
    /// queued before a `fork` that made this process: it belongs to the
    /// parent's runtime, and waiting for it here would never end.
    pub(crate) fn check_not_forked(&self) -> Result<(), Error> {
        let busy = self.state.load() & (PENDING | RUNNING) != 0;
        if busy && self.fork_generation.load(Relaxed) != crate::sys::forks() {
            return Err(Error::Forked);
        }
        Ok(())
    }

    pub(crate) fn call(&self) {
        (self.func)()
    }

    pub(crate) fn lock_parked(&self) -> MutexGuard<'_, Vec<Parked>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Generation `gen` is done (ran — and `RUNNING` was cleared or handed
    /// to the next instance — or was cancelled): release its flushers and
    /// any `cancel_sync` waiting for `RUNNING` to clear.
    pub(crate) fn retire(&self, gen: u64) {
        self.ended.retire(gen);
        self.notify_if_waited();
    }

    /// A run of generation `gen` ended.
    pub(crate) fn retire_run(&self, gen: u64) {
        self.ended.retire_run(gen);
        self.notify_if_waited();
    }

    /// Wakes waiters after a change of what they wait for (`ended`, or
    /// `RUNNING` cleared), if any announced themselves.
    pub(crate) fn notify_if_waited(&self) {
        if self.state.load() & WAITERS != 0 {
            self.notify_waiters();
        }
    }

    pub(crate) fn notify_waiters(&self) {
        if self.state.take_waiters() {
            let _guard = self.wait_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wait_cv.notify_all();
        }
    }

    /// Sleeps until `done()` holds. Waiters announce themselves (`WAITERS`)
    /// before each check, and notifiers change the state before taking the
    /// flag, so a change is never missed (see README.md).
    fn wait_until(&self, mut done: impl FnMut(&WorkShared) -> bool) {
        let mut guard = self.wait_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            self.state.set_waiters();
            if done(self) {
                return;
            }
            guard = self.wait_cv.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Refuses `what::call` (a wait for this item) from inside the item
    /// itself, which would wait for its own end.
    pub(crate) fn check_not_current(&self, what: &str, call: &str) -> Result<(), Error> {
        if worker::current_work_id() == Some(self.id) {
            return Err(Error::WouldDeadlock(format!("{what}::{call} called from inside that work item")));
        }
        Ok(())
    }

    /// Clears `PENDING`; true if an instance was pending.
    pub(crate) fn cancel(&self) -> bool {
        let Some(cancelled) = self.state.try_clear_pending() else { return false };
        if let Some(gen) = cancelled.to_retire() {
            self.retire(gen);
        }
        true
    }

    /// `cancel_sync`, with `take_back` run once queueing is disabled (a
    /// delayed item disarms its timer there); returns whether anything was pending.
    pub(crate) fn cancel_sync_with(&self, what: &str, take_back: impl FnOnce() -> bool) -> Result<bool, Error> {
        self.check_not_current(what, "cancel_sync")?;
        self.check_not_forked()?;
        self.state.disable();
        let disarmed = take_back();
        let was_pending = self.cancel() || disarmed;
        self.wait_until(|w| w.state.load() & RUNNING == 0);
        self.state.enable();
        Ok(was_pending)
    }

    pub(crate) fn flush(&self, what: &str) -> Result<bool, Error> {
        self.check_not_current(what, "flush")?;
        self.check_not_forked()?;
        let Some(target) = self.flush_target() else { return Ok(false) };
        self.wait_flushed(target);
        Ok(true)
    }

    /// What a `flush` starting now waits for; `None` if the item is idle.
    pub(crate) fn flush_target(&self) -> Option<FlushTarget> {
        let s = self.state.load();
        if s & (PENDING | RUNNING) == 0 {
            return None;
        }
        // The pending instance must run or be cancelled, and a run in
        // progress must end — even if the newer instance is cancelled (its
        // retirement says nothing of the older run).
        Some(FlushTarget {
            pending: (s & PENDING != 0).then(|| gen_of(s)),
            runs_before: (s & RUNNING != 0).then(|| Ended::runs_of(self.ended.load())),
        })
    }

    /// Sleeps until what `target` names is over.
    pub(crate) fn wait_flushed(&self, target: FlushTarget) {
        let FlushTarget { pending, runs_before } = target;
        self.wait_until(|w| {
            let ended = w.ended.load();
            pending.is_none_or(|p| Ended::has_retired(ended, p))
                && runs_before.is_none_or(|n| Ended::runs_of(ended) != n || w.state.load() & RUNNING == 0)
        });
    }
}

/// What a `flush` waits for: the pending generation it saw, and if a run
/// was in progress, the count of finished runs then.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlushTarget {
    pending: Option<u64>,
    runs_before: Option<u64>,
}

/// A reusable work item: a function that can be queued on any workqueue,
/// again and again.
///
/// It follows the kernel's `work_struct` rules: queueing an item that is
/// already pending does nothing (and returns `false`); an item never runs on
/// two workers at the same time, even when queued on several queues; its
/// function may requeue the item itself. Cloning a `Work` gives another
/// handle to the same item.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use wq_core::{Work, Workqueue};
///
/// let wq = Workqueue::builder("example").build()?;
/// let hits = Arc::new(AtomicUsize::new(0));
/// let h = hits.clone();
/// let work = Work::new(move || { h.fetch_add(1, Ordering::SeqCst); });
/// assert!(wq.queue(&work));
/// work.flush()?;
/// assert_eq!(hits.load(Ordering::SeqCst), 1);
/// # Ok::<(), wq_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Work {
    pub(crate) shared: Arc<WorkShared>,
}

impl Work {
    /// A work item that runs `f` each time it executes.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Work {
        Work { shared: Arc::new(WorkShared::new(Box::new(f))) }
    }

    /// A process-unique id, as shown in errors and traces.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Whether the item is queued and has not started yet.
    pub fn is_pending(&self) -> bool {
        self.shared.state.load() & PENDING != 0
    }

    /// Whether a worker is running the item's function right now.
    pub fn is_running(&self) -> bool {
        self.shared.state.load() & RUNNING != 0
    }

    /// Takes the item off its queue if it has not started. Returns whether it
    /// was pending. A running instance is not waited for (see
    /// [`cancel_sync`](Work::cancel_sync)).
    pub fn cancel(&self) -> bool {
        self.shared.cancel()
    }

    /// Cancels the pending instance, if any, and waits until a running one
    /// finished. While it waits, queueing the item fails (also from the
    /// item itself), so when it returns the item is idle and can be queued
    /// again. Returns whether an instance was pending.
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] when called from inside this item;
    /// [`Error::Forked`] in a child made by `fork` while the item was
    /// pending or running (that instance is the parent's).
    pub fn cancel_sync(&self) -> Result<bool, Error> {
        self.shared.cancel_sync_with("Work", || false)
    }

    /// Waits until the last queued instance finished running. Returns
    /// whether there was one to wait for.
    ///
    /// # Errors
    /// [`Error::WouldDeadlock`] when called from inside this item;
    /// [`Error::Forked`] in a child made by `fork` while the item was
    /// pending or running (that instance is the parent's).
    pub fn flush(&self) -> Result<bool, Error> {
        self.shared.flush("Work")
    }
}

impl fmt::Debug for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Work")
            .field("id", &self.id())
            .field("pending", &self.is_pending())
            .field("running", &self.is_running())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::Runtime;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    const PATIENCE: Duration = Duration::from_secs(10);

    /// Generations wrap after 2^40 queueings; `flush` of each instance
    /// still waits for its run, before, at and after the wrap.
    #[test]
    fn flush_waits_for_each_run_across_the_generation_wrap() {
        let rt = Runtime::builder().cpus([0]).publish(false).build().unwrap();
        let wq = rt.workqueue("wrap").ordered().build().unwrap();
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let f = move || {
            started_tx.send(()).unwrap();
            release_rx.lock().unwrap().recv_timeout(PATIENCE).expect("never released");
        };
        let last = (1 << 40) - 1;
        let shared = WorkShared {
            state: State::idle_at(last - 1),
            ended: Ended::retired_at(last - 1),
            ..WorkShared::new(Box::new(f))
        };
        let work = Work { shared: Arc::new(shared) };
        for round in 0..4 {
            // Held behind a gate, so that the flush finds the item pending.
            let (gate_tx, gate_rx) = mpsc::channel::<()>();
            let gate = wq.submit(move || gate_rx.recv_timeout(PATIENCE).expect("gate never opened")).unwrap();
            assert!(wq.queue(&work));
            let (flushed_tx, flushed_rx) = mpsc::channel();
            let w = work.clone();
            thread::spawn(move || flushed_tx.send(w.flush()).unwrap());
            thread::sleep(Duration::from_millis(20));
            gate_tx.send(()).unwrap();
            gate.wait().unwrap();
            started_rx.recv_timeout(PATIENCE).expect("the item never started");
            assert!(
                matches!(flushed_rx.recv_timeout(Duration::from_millis(40)), Err(mpsc::RecvTimeoutError::Timeout)),
                "round {round} (generation {}): flush returned while the item ran",
                gen_of(work.shared.state.load())
            );
            release_tx.send(()).unwrap();
            assert!(flushed_rx.recv_timeout(PATIENCE).expect("flush never returned").unwrap());
        }
        assert!(gen_of(work.shared.state.load()) < 8, "the generations wrapped");
    }
}
