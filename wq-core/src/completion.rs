//! One-shot closures and the handle to their result.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::pool::{drop_quietly, emit_quietly, Outcome};
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};

/// Queued, not started: `cancel` may still win.
const QUEUED: u8 = 0;
/// A worker started the closure; it will run to the end.
const STARTED: u8 = 1;
/// Cancelled before it started; the closure is dropped unrun.
const CANCELLED: u8 = 2;

/// The result slot shared by a submitted closure and its [`Completion`].
pub(crate) struct CompletionShared<T> {
    /// `QUEUED -> STARTED` by the worker, or `QUEUED -> CANCELLED` by
    /// `Completion::cancel`; whoever wins the exchange decides.
    state: AtomicU8,
    slot: Mutex<Slot<T>>,
    cv: Condvar,
}

struct Slot<T> {
    /// The panic is boxed: it is rare, and inline (48 bytes) it put a
    /// `submit` of a small closure past 120 bytes, glibc's largest
    /// fastbin request. The worker frees what the submitter allocated;
    /// above that size each such free takes the submitter's arena lock
    /// (`compare throughput` made 4× the futex calls).
    result: Option<Result<T, Box<Panicked>>>,
    /// The `Completion`'s future returned the result: it must not be
    /// polled or waited on again (the value is gone).
    taken: bool,
    waker: Option<Waker>,
    /// A thread sleeps in `wait`; only then is the condvar signalled.
    sleepers: u32,
}

impl<T> CompletionShared<T> {
    pub(crate) fn new() -> CompletionShared<T> {
        CompletionShared {
            state: AtomicU8::new(QUEUED),
            slot: Mutex::new(Slot { result: None, taken: false, waker: None, sleepers: 0 }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker's side: runs `f` unless cancelled and publishes its
    /// result. `detached()` says whether the `Completion` is gone.
    fn run(&self, f: impl FnOnce() -> T, detached: impl FnOnce() -> bool) -> Outcome {
        if self.state.compare_exchange(QUEUED, STARTED, SeqCst, SeqCst).is_err() {
            // Cancelled: the closure is dropped unrun (its captures' Drop may panic).
            drop_quietly(f);
            return Outcome::Skipped;
        }
        let result = catch_unwind(AssertUnwindSafe(f)).map_err(|p| Box::new(Panicked::new(p)));
        let outcome = if result.is_err() { Outcome::Panicked } else { Outcome::Ran };
        if detached() {
            // Nobody wants the value.
            drop_quietly(result);
            return outcome;
        }
        let mut slot = self.lock();
        slot.result = Some(result);
        let waker = slot.waker.take();
        let sleepers = slot.sleepers;
        drop(slot);
        if sleepers > 0 {
            self.cv.notify_all();
        }
        if let Some(w) = waker {
            // The waker is the awaiting executor's code: a panic in it must
            // not end this worker (tokio likewise wakes a JoinHandle's
            // waker under catch_unwind).
            if catch_unwind(AssertUnwindSafe(|| w.wake())).is_err() {
                emit_quietly(|| tracing::warn!(target: "wq", "a Completion's waker panicked when woken"));
            }
        }
        outcome
    }
}

/// A submitted closure and its result slot in one allocation, shared by
/// the queued entry and the [`Completion`]: one allocation per `submit`.
pub(crate) struct Task<T, F> {
    shared: CompletionShared<T>,
    /// Taken by the one `run` (the queued entry owns the only `Runnable`
    /// handle and `run` consumes it); a task dropped unrun drops it here.
    f: Mutex<Option<F>>,
    /// The allocation comes from, and goes back to, `recycle.rs`.
    recycled: bool,
}

impl<T, F> Task<T, F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    /// The task to queue and the handle to its result. `recycled`: take
    /// the allocation from `recycle.rs`, and give it back there when a
    /// worker drops it; worth it only when the worker runs on another CPU
    /// (`recycle::pays_off_on`).
    pub(crate) fn split(f: F, recycled: bool) -> (Arc<dyn Runnable>, Completion<T>) {
        let task = Task { shared: CompletionShared::new(), f: Mutex::new(Some(f)), recycled };
        let task = if recycled { crate::recycle::arc(task) } else { Arc::new(task) };
        (task.clone(), Completion { shared: task })
    }
}

/// A one-shot work item kept in an `Arc` shared with whoever waits for
/// it, queued with [`Workqueue::execute_shared`](crate::Workqueue::execute_shared).
///
/// An executor's blocking call (wq-futures' `spawn_blocking`) keeps its
/// closure, result slot and waker in one allocation; queueing that `Arc`
/// itself costs no second allocation, where [`execute`](crate::Workqueue::execute)
/// would box a closure around it. (`submit` does the same inside wq-core.)
///
/// Exactly one of [`run`](SharedItem::run) and [`discard`](SharedItem::discard)
/// is called for each successful queueing, and `discard` also when the
/// queue refuses the item.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::{mpsc, Arc, Mutex};
/// use wq_core::{Runtime, SharedItem};
///
/// struct Ping {
///     ran: AtomicBool,
///     done: Mutex<mpsc::Sender<&'static str>>,
/// }
///
/// impl SharedItem for Ping {
///     fn run(self: Arc<Self>) {
///         self.ran.store(true, Ordering::Release);
///         let _ = self.done.lock().unwrap().send("ran");
///     }
///     fn discard(self: Arc<Self>) {
///         let _ = self.done.lock().unwrap().send("discarded");
///     }
/// }
///
/// let rt = Runtime::builder().build()?;
/// let wq = rt.workqueue("shared").build()?;
/// let (tx, rx) = mpsc::channel();
/// let ping = Arc::new(Ping { ran: AtomicBool::new(false), done: Mutex::new(tx) });
/// wq.execute_shared(ping.clone())?;
/// assert_eq!(rx.recv().unwrap(), "ran");
/// assert!(ping.ran.load(Ordering::Acquire));
/// # Ok::<(), wq_core::Error>(())
/// ```
pub trait SharedItem: Send + Sync + 'static {
    /// Runs the item on a worker. A panic is caught and counted in the
    /// queue's `panics`, as a closure's would be.
    fn run(self: Arc<Self>);

    /// The item will never run: the queue refused it, or it was dropped
    /// from a worklist unrun. Whoever waits for it should be told. A panic
    /// here is caught.
    fn discard(self: Arc<Self>);
}

/// A queued entry that is its own allocation: a [`SharedItem`], or a
/// submitted closure ([`Task`]). Run it, or, dropped unrun, discard it.
pub(crate) struct SharedJob(Option<Arc<dyn Runnable>>);

impl SharedJob {
    pub(crate) fn new(item: Arc<dyn Runnable>) -> SharedJob {
        SharedJob(Some(item))
    }

    pub(crate) fn run(mut self) -> Outcome {
        match self.0.take() {
            Some(item) => item.run(),
            None => Outcome::Skipped,
        }
    }
}

impl Drop for SharedJob {
    fn drop(&mut self) {
        if let Some(item) = self.0.take() {
            item.discard();
        }
    }
}

/// What a worker runs for a [`SharedJob`]: how it ended, for the stats.
pub(crate) trait Runnable: Send + Sync {
    fn run(self: Arc<Self>) -> Outcome;

    /// Dropped unrun. Nothing to do for a submitted closure: a refused
    /// `submit` hands out no `Completion`, and dropping the task drops `f`.
    fn discard(self: Arc<Self>) {}
}

impl<S: SharedItem> Runnable for S {
    fn run(self: Arc<Self>) -> Outcome {
        Outcome::of_call(move || SharedItem::run(self))
    }

    fn discard(self: Arc<Self>) {
        let _ = Outcome::of_call(move || SharedItem::discard(self));
    }
}

impl<T, F> Runnable for Task<T, F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Arc<Self>) -> Outcome {
        let this = match Task::run_detached(self) {
            Ok(outcome) => return outcome,
            Err(this) => this,
        };
        let f = this.f.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(f) = f else { return Outcome::Skipped };
        // Only the Completion can hold the other reference.
        let outcome = this.shared.run(f, || Arc::strong_count(&this) == 1);
        if this.recycled && Arc::strong_count(&this) == 1 {
            // Detached and done: empty it, then keep the allocation. The
            // result (stored if the Completion went just after the run) and
            // a waker a dropped Completion future left are user code.
            let leftovers = {
                let mut slot = this.shared.lock();
                (slot.result.take(), slot.waker.take())
            };
            drop_quietly(leftovers);
            crate::recycle::give_back(this);
        } else {
            // The Completion may have gone since the checks above, leaving
            // this the last reference: the result is user code, and its
            // drop must not take the worker with it.
            drop_quietly(this);
        }
        outcome
    }
}

impl<T, F> Task<T, F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    /// `run` for a task whose `Completion` is gone (`Arc::get_mut`
    /// succeeds; else the task comes back): nobody can cancel it any more
    /// or wait for its value, so it needs neither the lock on `f` nor the
    /// `QUEUED -> STARTED` exchange, two atomic read-modify-writes of a
    /// tiny item's ten or so. A `cancel` made before the `Completion` went
    /// is still honoured.
    fn run_detached(mut this: Arc<Self>) -> Result<Outcome, Arc<Self>> {
        let Some(task) = Arc::get_mut(&mut this) else { return Err(this) };
        let f = task.f.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        let cancelled = *task.shared.state.get_mut() == CANCELLED;
        let outcome = match f {
            None => Outcome::Skipped,
            Some(f) if cancelled => {
                drop_quietly(f);
                Outcome::Skipped
            }
            Some(f) => {
                // The value is user code too: dropped quietly, outside the run's outcome.
                let mut value = None;
                let outcome = Outcome::of_call(|| value = Some(f()));
                drop_quietly(value);
                outcome
            }
        };
        // A waker a dropped Completion future left is user code.
        let slot = task.shared.slot.get_mut().unwrap_or_else(|e| e.into_inner());
        drop_quietly(slot.waker.take());
        if task.recycled {
            crate::recycle::give_back(this);
        }
        Ok(outcome)
    }
}

/// The result side of a [`Task`], whatever its closure's type.
trait HasResult<T>: Send + Sync {
    fn shared(&self) -> &CompletionShared<T>;
}

impl<T: Send, F: Send> HasResult<T> for Task<T, F> {
    fn shared(&self) -> &CompletionShared<T> {
        &self.shared
    }
}

/// The handle to a closure queued with [`Workqueue::submit`](crate::Workqueue::submit).
///
/// Wait for the result with [`wait`](Completion::wait), or `.await` it: it is
/// a `Future`. Dropping it detaches the closure, which still runs.
///
/// ```
/// let wq = wq_core::Workqueue::builder("compute").build()?;
/// let answer = wq.submit(|| 6 * 7)?;
/// assert_eq!(answer.wait().unwrap(), 42);
///
/// let boom = wq.submit(|| -> u32 { panic!("no luck") })?;
/// assert_eq!(boom.wait().unwrap_err().message(), "no luck");
/// # Ok::<(), wq_core::Error>(())
/// ```
#[must_use = "dropping a Completion detaches the work; call .wait() or .await it to get the result"]
pub struct Completion<T> {
    shared: Arc<dyn HasResult<T>>,
}

impl<T> Completion<T> {
    /// Blocks until the closure finished; gives its value, or the panic
    /// that ended it.
    ///
    /// In a child made by `fork`, a closure submitted before the fork runs
    /// in the parent only: waiting for it here never ends (as joining a
    /// parent's thread cannot). Use [`wait_timeout`](Completion::wait_timeout) there.
    ///
    /// # Panics
    /// If its future already returned the result (`.await`ed or polled to
    /// `Ready`): the value is gone, and waiting would never end.
    pub fn wait(self) -> Result<T, Panicked> {
        let mut slot = self.shared.shared().lock();
        assert!(!slot.taken, "Completion waited on after its future returned the result");
        loop {
            if let Some(result) = slot.result.take() {
                return result.map_err(|p| *p);
            }
            slot.sleepers += 1;
            slot = self.shared.shared().cv.wait(slot).unwrap_or_else(|e| e.into_inner());
            slot.sleepers -= 1;
        }
    }

    /// Blocks until the closure finished or `timeout` passed; returns
    /// whether it finished (then [`wait`](Completion::wait) returns at once).
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut slot = self.shared.shared().lock();
        loop {
            if slot.result.is_some() || slot.taken {
                return true;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return false;
            }
            slot.sleepers += 1;
            slot = self.shared.shared().cv.wait_timeout(slot, left).unwrap_or_else(|e| e.into_inner()).0;
            slot.sleepers -= 1;
        }
    }

    /// Whether the closure finished (its result is ready).
    pub fn is_finished(&self) -> bool {
        let slot = self.shared.shared().lock();
        slot.result.is_some() || slot.taken
    }

    /// Cancels the closure if no worker started it yet: it is then dropped
    /// without running. Gives the handle back if it already started.
    pub fn cancel(self) -> Result<(), Completion<T>> {
        match self.shared.shared().state.compare_exchange(QUEUED, CANCELLED, SeqCst, SeqCst) {
            Ok(_) => Ok(()),
            Err(_) => Err(self),
        }
    }
}

impl<T> Future for Completion<T> {
    type Output = Result<T, Panicked>;

    /// # Panics
    /// If polled again after it returned `Ready` (the result was moved out).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.shared.shared().lock();
        assert!(!slot.taken, "Completion polled after it returned Ready");
        if let Some(result) = slot.result.take() {
            slot.taken = true;
            slot.waker = None;
            return Poll::Ready(result.map_err(|p| *p));
        }
        assert!(self.shared.shared().state.load(SeqCst) != CANCELLED, "Completion polled after it was cancelled");
        match &mut slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion").field("finished", &self.is_finished()).finish()
    }
}

/// A work item panicked; this carries the panic.
pub struct Panicked {
    message: String,
    payload: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Panicked {
    pub(crate) fn new(payload: Box<dyn Any + Send>) -> Panicked {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a non-string panic payload".to_owned()
        };
        Panicked { message, payload: Mutex::new(Some(payload)) }
    }

    /// The panic message, when the payload was a string.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The panic payload, as `std::panic::catch_unwind` gives it.
    pub fn into_panic(self) -> Box<dyn Any + Send> {
        let message = self.message;
        self.payload.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(|| Box::new(message))
    }

    /// Continues the panic on the calling thread.
    pub fn resume(self) -> ! {
        std::panic::resume_unwind(self.into_panic())
    }
}

impl fmt::Debug for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Panicked").field("message", &self.message).finish()
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "work item panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}

#[cfg(test)]
mod tests {
    use super::Task;

    /// The `Arc` a `submit` allocates: two counters, then the task.
    fn submit_allocation<T, F: FnOnce() -> T>(_: &F) -> usize {
        2 * std::mem::size_of::<usize>() + std::mem::size_of::<Task<T, F>>()
    }

    /// A `submit` of a closure capturing two words is small enough for
    /// glibc's fastbins (see `Slot::result`).
    #[test]
    fn a_small_submit_fits_a_fastbin() {
        let (a, b) = (1u64, 2u64);
        let size = submit_allocation(&move || a + b);
        assert!(size <= 120, "a submit of a 16-byte closure allocates {size} bytes");
    }
}
