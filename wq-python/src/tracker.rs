//! Bookkeeping of the Python work items a queue has in flight.
//!
//! wq-core runs closures; Python's `Executor` contract needs more: `shutdown(cancel_futures=True)`
//! must find the items that have not started, `shutdown(wait=True)`, `flush()` and the interpreter
//! exit hook must wait for the ones that have. Each `cmwq` queue object therefore keeps a
//! [`Tracker`]: a sequence-numbered registry of its unfinished items. Every blocking wait here
//! releases the GIL and wakes every [`SIGNAL_CHECK`] to run Python's signal handlers, so Ctrl-C
//! reaches the main thread as `KeyboardInterrupt`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// How often a blocked wait wakes up to let Python handle signals.
pub(crate) const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// The item sits in the workqueue; nobody has claimed it.
const QUEUED: u8 = 0;
/// A worker claimed the item: it will run (or find its future cancelled from Python).
const CLAIMED: u8 = 1;
/// `shutdown(cancel_futures=True)` won the race: the item never runs.
const CANCELLED: u8 = 2;

/// Set by the interpreter-exit hook: every queue refuses new work from then on.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Set when the exit hook gave up waiting (it was interrupted): the interpreter is about to be
/// finalized with items possibly still queued, so no worker may enter Python any more.
static ABANDONED: AtomicBool = AtomicBool::new(false);
/// Every tracker ever created, so the exit hook can wait for all of them.
static TRACKERS: Mutex<Vec<Weak<Tracker>>> = Mutex::new(Vec::new());

thread_local! {
    /// The tracker (by address) and sequence number of the item this thread is running, so waits
    /// that could only end after that item ends are refused instead of hanging.
    static CURRENT: Cell<Option<(usize, u64)>> = const { Cell::new(None) };
}

/// Locks `m`, ignoring poisoning: no code panics while holding these locks, and a poisoned lock
/// must not turn every later submit into a panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// True once no worker may attach to the interpreter (see [`ABANDONED`]).
pub(crate) fn python_abandoned() -> bool {
    ABANDONED.load(Ordering::Acquire)
}

/// One submitted item as the registry sees it.
pub(crate) struct Entry {
    state: AtomicU8,
    /// The item's `concurrent.futures.Future`, for `cancel_futures`.
    future: Py<PyAny>,
}

impl Entry {
    /// Claims the item for running; false if it was cancelled first.
    pub(crate) fn claim(&self) -> bool {
        self.state.compare_exchange(QUEUED, CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn cancel(&self) -> bool {
        self.state.compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The item's future.
    pub(crate) fn future(&self) -> &Py<PyAny> {
        &self.future
    }
}

/// Why a tracker takes no more items.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closed {
    Open,
    Shutdown,
}

struct State {
    next_seq: u64,
    items: BTreeMap<u64, Arc<Entry>>,
    closed: Closed,
    /// Threads blocked in [`Tracker::wait_until`]; finishing items notify only when non-zero.
    waiters: usize,
}

/// The unfinished Python items of one queue object.
pub(crate) struct Tracker {
    state: Mutex<State>,
    cond: Condvar,
}

impl Tracker {
    /// A new, open tracker, registered for the exit hook.
    pub(crate) fn new() -> Arc<Tracker> {
        let tracker = Arc::new(Tracker {
            state: Mutex::new(State { next_seq: 0, items: BTreeMap::new(), closed: Closed::Open, waiters: 0 }),
            cond: Condvar::new(),
        });
        let mut all = lock(&TRACKERS);
        all.retain(|t| t.strong_count() > 0);
        all.push(Arc::downgrade(&tracker));
        tracker
    }

    fn key(&self) -> usize {
        self as *const Tracker as usize
    }

    /// Registers a new item; refuses it after shutdown or interpreter exit, with the messages
    /// `ThreadPoolExecutor` uses.
    pub(crate) fn register(&self, future: Py<PyAny>) -> PyResult<(u64, Arc<Entry>)> {
        let mut st = lock(&self.state);
        if st.closed == Closed::Shutdown {
            return Err(PyRuntimeError::new_err("cannot schedule new futures after shutdown"));
        }
        if EXITING.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err("cannot schedule new futures after interpreter shutdown"));
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let entry = Arc::new(Entry { state: AtomicU8::new(QUEUED), future });
        st.items.insert(seq, Arc::clone(&entry));
        Ok((seq, entry))
    }

    /// Forgets an item that finished, or that the workqueue refused.
    pub(crate) fn finish(&self, seq: u64) {
        let mut st = lock(&self.state);
        let removed = st.items.remove(&seq);
        let notify = st.waiters > 0;
        drop(st);
        // The entry holds a Python reference: drop it after unlocking (the caller is normally
        // attached, so the decref happens right here).
        drop(removed);
        if notify {
            self.cond.notify_all();
        }
    }

    /// Refuses new items from now on.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = Closed::Shutdown;
    }

    /// True once [`close`](Self::close) ran.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed == Closed::Shutdown
    }

    /// Number of items submitted and not finished.
    pub(crate) fn pending(&self) -> usize {
        lock(&self.state).items.len()
    }

    /// Marks every unclaimed item cancelled and returns their futures, to be cancelled by the
    /// caller with the GIL held and no lock of ours held (`Future.cancel` runs callbacks).
    pub(crate) fn cancel_queued(&self) -> Vec<Arc<Entry>> {
        let mut st = lock(&self.state);
        let mut cancelled = Vec::new();
        st.items.retain(|_, entry| {
            if entry.cancel() {
                cancelled.push(Arc::clone(entry));
                false
            } else {
                true
            }
        });
        let notify = st.waiters > 0;
        drop(st);
        if notify {
            self.cond.notify_all();
        }
        cancelled
    }

    /// Fails if the calling thread is running an item of this tracker whose sequence number is
    /// below `before` (waiting would wait for itself).
    fn refuse_self_wait(&self, before: u64, what: &str) -> PyResult<()> {
        match CURRENT.with(Cell::get) {
            Some((key, seq)) if key == self.key() && seq < before => Err(PyRuntimeError::new_err(format!(
                "{what} called from one of the queue's own work items would deadlock"
            ))),
            _ => Ok(()),
        }
    }

    /// Waits until every item submitted before this call has finished.
    pub(crate) fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let before = lock(&self.state).next_seq;
        self.refuse_self_wait(before, "flush()")?;
        self.wait_until(py, move |st| st.items.keys().next().is_none_or(|&first| first >= before))
    }

    /// Waits until no item is in flight.
    pub(crate) fn wait_idle(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        self.refuse_self_wait(u64::MAX, what)?;
        self.wait_until(py, |st| st.items.is_empty())
    }

    /// Blocks until `done` holds, with the GIL released and signal handlers run every
    /// [`SIGNAL_CHECK`]; a handler's exception (KeyboardInterrupt) ends the wait.
    fn wait_until(&self, py: Python<'_>, done: impl Fn(&State) -> bool + Send + Sync) -> PyResult<()> {
        loop {
            let finished = py.detach(|| {
                // On a wq worker, waiting must not hold up the pool: let another worker start.
                wq_core::blocking(|| {
                    let mut st = lock(&self.state);
                    if done(&st) {
                        return true;
                    }
                    st.waiters += 1;
                    let (mut st, _) = self.cond.wait_timeout(st, SIGNAL_CHECK).unwrap_or_else(PoisonError::into_inner);
                    st.waiters -= 1;
                    done(&st)
                })
            });
            if finished {
                return Ok(());
            }
            py.check_signals()?;
        }
    }
}

/// Marks the calling thread as running item `seq` of `tracker` until dropped.
pub(crate) struct RunningGuard {
    previous: Option<(usize, u64)>,
}

impl RunningGuard {
    /// Records that this thread now runs `seq` of `tracker`.
    pub(crate) fn enter(tracker: &Tracker, seq: u64) -> RunningGuard {
        let previous = CURRENT.with(|c| c.replace(Some((tracker.key(), seq))));
        RunningGuard { previous }
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
    }
}

/// The interpreter-exit hook (registered with `threading._register_atexit`, as
/// `ThreadPoolExecutor` does): refuses new work, then waits for every queued and running Python
/// item, so the interpreter is never finalized under a worker.
///
/// Ctrl-C during that wait cancels the items no worker has claimed and keeps waiting for the
/// running ones (they are bounded, and a worker must not be inside Python while it is
/// finalized); a second Ctrl-C gives up on them: workers stop entering Python and the
/// interpreter is finalized around whatever still runs, as with daemon threads. The first
/// interruption is re-raised either way.
pub(crate) fn exit_hook(py: Python<'_>) -> PyResult<()> {
    EXITING.store(true, Ordering::Release);
    let trackers: Vec<Arc<Tracker>> = lock(&TRACKERS).iter().filter_map(Weak::upgrade).collect();
    let mut interrupted: Option<PyErr> = None;
    for tracker in &trackers {
        if let Err(err) = tracker.wait_idle(py, "interpreter exit") {
            interrupted = Some(err);
            break;
        }
    }
    let Some(first) = interrupted else {
        return Ok(());
    };
    for tracker in &trackers {
        for entry in tracker.cancel_queued() {
            // Best effort: the interpreter is going away and `first` says why.
            let _ = entry.future.bind(py).call_method0("cancel");
        }
    }
    for tracker in &trackers {
        if tracker.wait_idle(py, "interpreter exit").is_err() {
            ABANDONED.store(true, Ordering::Release);
            break;
        }
    }
    Err(first)
}
