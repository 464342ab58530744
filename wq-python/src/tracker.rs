//! Bookkeeping of the Python work items a queue has in flight.
//!
//! wq-core runs closures; Python's `Executor` contract needs more: `shutdown(cancel_futures=True)`
//! must find the items that have not started, `shutdown(wait=True)`, `flush()` and the interpreter
//! exit hook must wait for the ones that have. Each `cmwq` queue object therefore keeps a
//! [`Tracker`]: the queue of its submitted items no worker has taken yet, in submission order,
//! and the sequence numbers of the ones running. Every blocking wait here
//! releases the GIL and wakes every [`SIGNAL_CHECK`] to run Python's signal handlers, so Ctrl-C
//! reaches the main thread as `KeyboardInterrupt`.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::future::FutureHandle;

/// How often a blocked wait wakes up to let Python handle signals.
pub(crate) const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// Set by the interpreter-exit hook: every queue refuses new work from then on.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Set when the exit hook gave up waiting (it was interrupted): the interpreter is about to be
/// finalized with items possibly still queued, so no worker may enter Python any more.
static ABANDONED: AtomicBool = AtomicBool::new(false);
/// Forks between the interpreter's start and this process (0 in the first process): raised
/// in each child made by `fork`. The parent's workers are not in a child, so what the parent's
/// trackers had queued or running never ends there and the exit hook must not wait for it;
/// a tracker made in the child (on a runtime of its own) is waited for as anywhere.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
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

/// One submitted Python call: what to call and the future that receives the outcome.
pub(crate) struct Item {
    /// Submission order within its tracker.
    pub(crate) seq: u64,
    pub(crate) func: Py<PyAny>,
    pub(crate) args: Py<PyTuple>,
    pub(crate) kwargs: Option<Py<PyDict>>,
    pub(crate) future: FutureHandle,
}

/// Why a tracker takes no more items.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closed {
    Open,
    Shutdown,
}

struct State {
    next_seq: u64,
    /// Submitted items no worker has taken, oldest first (so in `seq` order).
    queued: VecDeque<Item>,
    /// Sequence numbers of the items workers have taken and not finished (at most one per
    /// worker, so a short list).
    running: Vec<u64>,
    closed: Closed,
    /// Threads blocked in [`Tracker::wait_until`]; finishing items notify only when non-zero.
    waiters: usize,
    /// When the last item was pushed.
    last_push: Option<Instant>,
}

/// A push this long after the previous one, onto an idle queue, is "lone" (see
/// [`Tracker::push`]): not part of a burst.
const LONE_GAP: Duration = Duration::from_micros(50);

/// The unfinished Python items of one queue object, and the queue of the ones not started.
///
/// Each submitted item also puts one wq-core work item (a token) on the workqueue; a token that
/// runs takes the *oldest* queued item, not a particular one, and a worker that has just run an
/// item may take the next one right away while it is still attached to the interpreter. Every
/// item is pushed before its token is queued and every token takes an item if one is queued, so
/// there are always at least as many tokens in wq-core as items here: none is left behind, and
/// none runs twice (taking happens under the lock). wq-core still sees one work item per Python
/// call, so its concurrency management, `max_active` and ordering apply as before.
pub(crate) struct Tracker {
    state: Mutex<State>,
    cond: Condvar,
    /// `FORK_GENERATION` when the tracker was made: only a tracker of this process is waited
    /// for at exit.
    fork_generation: u64,
}

impl Tracker {
    /// A new, open tracker, registered for the exit hook.
    pub(crate) fn new() -> Arc<Tracker> {
        let tracker = Arc::new(Tracker {
            state: Mutex::new(State {
                next_seq: 0,
                queued: VecDeque::new(),
                running: Vec::new(),
                closed: Closed::Open,
                waiters: 0,
                last_push: None,
            }),
            cond: Condvar::new(),
            fork_generation: FORK_GENERATION.load(Ordering::Acquire),
        });
        let mut all = lock(&TRACKERS);
        all.retain(|t| t.strong_count() > 0);
        all.push(Arc::downgrade(&tracker));
        tracker
    }

    fn key(&self) -> usize {
        self as *const Tracker as usize
    }

    /// Queues the item `make` builds from its sequence number; refuses it after shutdown or
    /// interpreter exit, with the messages `ThreadPoolExecutor` uses. Returns the sequence
    /// number and whether the item is "lone": the queue was idle (nothing queued or running)
    /// and the previous push was at least [`LONE_GAP`] ago, so it is not one of a burst.
    pub(crate) fn push(&self, make: impl FnOnce(u64) -> Item) -> PyResult<(u64, bool)> {
        let mut st = lock(&self.state);
        if st.closed == Closed::Shutdown {
            return Err(PyRuntimeError::new_err("cannot schedule new futures after shutdown"));
        }
        if EXITING.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err("cannot schedule new futures after interpreter shutdown"));
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let now = Instant::now();
        let lone = st.queued.is_empty()
            && st.running.is_empty()
            && st.last_push.is_none_or(|last| now.saturating_duration_since(last) >= LONE_GAP);
        st.last_push = Some(now);
        st.queued.push_back(make(seq));
        Ok((seq, lone))
    }

    /// Takes the oldest queued item for running, if any.
    pub(crate) fn take(&self) -> Option<Item> {
        let mut st = lock(&self.state);
        let item = st.queued.pop_front()?;
        st.running.push(item.seq);
        Some(item)
    }

    /// Removes item `seq` if no worker has taken it (its token was refused).
    pub(crate) fn unqueue(&self, seq: u64) -> Option<Item> {
        let mut st = lock(&self.state);
        let at = st.queued.iter().rposition(|item| item.seq == seq)?;
        let item = st.queued.remove(at);
        let notify = st.waiters > 0;
        drop(st);
        if notify {
            self.cond.notify_all();
        }
        item
    }

    /// Forgets the taken item `seq`, which has finished; with `take_next`, also takes the oldest
    /// queued item in the same critical section.
    pub(crate) fn finish(&self, seq: u64, take_next: bool) -> Option<Item> {
        let mut st = lock(&self.state);
        if let Some(at) = st.running.iter().position(|&s| s == seq) {
            st.running.swap_remove(at);
        }
        let next = if take_next { st.queued.pop_front() } else { None };
        if let Some(item) = &next {
            st.running.push(item.seq);
        }
        let notify = st.waiters > 0;
        drop(st);
        if notify {
            self.cond.notify_all();
        }
        next
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
        let st = lock(&self.state);
        st.queued.len() + st.running.len()
    }

    /// Removes every item no worker has taken and returns them, for the caller to cancel their
    /// futures with the GIL held and no lock of ours held (`Future.cancel` runs callbacks).
    pub(crate) fn cancel_queued(&self) -> Vec<Item> {
        let mut st = lock(&self.state);
        let cancelled: Vec<Item> = st.queued.drain(..).collect();
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
        self.wait_until(py, move |st| {
            st.queued.front().is_none_or(|item| item.seq >= before) && st.running.iter().all(|&seq| seq >= before)
        })
    }

    /// Waits until no item is in flight.
    pub(crate) fn wait_idle(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        self.refuse_self_wait(u64::MAX, what)?;
        self.wait_until(py, |st| st.queued.is_empty() && st.running.is_empty())
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
    // In a child made by `fork`, the items the parent's trackers count belong to the parent's
    // workers (a `ThreadPoolExecutor`'s hook there likewise joins only threads that
    // `threading` knows are gone): only the trackers made in this process are waited for.
    let generation = FORK_GENERATION.load(Ordering::Acquire);
    let trackers: Vec<Arc<Tracker>> =
        lock(&TRACKERS).iter().filter_map(Weak::upgrade).filter(|t| t.fork_generation == generation).collect();
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
        for item in tracker.cancel_queued() {
            // Best effort: the interpreter is going away and `first` says why.
            let _ = item.future.future.bind(py).call_method0("cancel");
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

/// Called in a child process right after `fork` (`os.register_at_fork`): see
/// [`FORK_GENERATION`].
pub(crate) fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
}
