//! Tasks: a future turned into work items, and the handle that awaits it.
//!
//! A task is an `async-task` allocation whose schedule function queues the
//! task's `Runnable` on a workqueue with `Workqueue::execute_runnable`, which
//! queues the `Runnable` itself (no allocation per poll). Every poll is
//! therefore one work item, and the queue's policy (HIGHPRI pools,
//! `max_active`, ordering) applies to polls exactly as to any other item.
//!
//! The future is wrapped in [`Guarded`], which catches panics, honours
//! [`JoinHandle::abort`] and turns both into an [`Outcome`], so nothing ever
//! unwinds out of `Runnable::run` into the worker.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU64;
use std::panic::{catch_unwind, AssertUnwindSafe, RefUnwindSafe, UnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_task::{FallibleTask, Runnable};
use futures::task::AtomicWaker;
use pin_project_lite::pin_project;
use wq_core::{Error, Workqueue};

use crate::call::CallHandle;

/// What a task's wrapper future produces.
enum Outcome<T> {
    /// The future completed with this value.
    Done(T),
    /// The future panicked; the payload of the panic.
    Panicked(Box<dyn Any + Send + 'static>),
    /// [`JoinHandle::abort`] was called before the future completed.
    Aborted,
}

/// A task's output as async-task keeps it. async-task drops an output that
/// no handle takes (a detached task's, or a finished one whose handle is
/// dropped) where a panic aborts the process or unwinds into whoever
/// dropped the handle; the value's `Drop` is user code, so it runs here,
/// where a panic is caught (tokio swallows it the same way).
struct Quiet<T>(Option<Outcome<T>>);

impl<T> Quiet<T> {
    fn new(outcome: Outcome<T>) -> Quiet<T> {
        Quiet(Some(outcome))
    }

    /// The outcome, for the handle that awaits it.
    fn take(mut self) -> Outcome<T> {
        self.0.take().expect("a task's output is taken once")
    }
}

impl<T> Drop for Quiet<T> {
    fn drop(&mut self) {
        if let Some(outcome) = self.0.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(outcome)));
        }
    }
}

/// State shared by a task's wrapper future, its [`JoinHandle`] and any
/// [`AbortHandle`].
struct Shared {
    aborted: AtomicBool,
    /// Set once the wrapper future is gone: completed, aborted or dropped
    /// unpolled because its queue refused it.
    finished: AtomicBool,
    /// The task's own waker, so `abort` can get a pending task polled once
    /// more and let it observe the abort. Held only while `handles` is
    /// non-zero: the task owns this `Shared`, so its own waker here keeps
    /// it alive, and once nobody can abort it, only the wakers its future
    /// gave out may (when they are all gone, async-task drops the task).
    waker: AtomicWaker,
    /// The [`JoinHandle`] and the [`AbortHandle`]s that exist: who may still
    /// abort the task. Starts at 1, the `JoinHandle`.
    handles: AtomicUsize,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            aborted: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            handles: AtomicUsize::new(1),
        }
    }

    /// Keeps the waker of a poll, for `abort`, if a handle may still abort.
    /// Registered first, then `handles` read again (SeqCst, as the last
    /// handle's decrement before it takes the waker): either the last
    /// handle's take finds this waker, or this read sees no handle left
    /// and takes it back itself.
    fn keep_waker(&self, cx: &Context<'_>) {
        if self.handles.load(Ordering::SeqCst) == 0 {
            return;
        }
        self.waker.register(cx.waker());
        if self.handles.load(Ordering::SeqCst) == 0 {
            drop(self.waker.take());
        }
    }
}

/// What an [`AbortHandle`] can do to a task or a blocking call.
pub(crate) trait Abort: Send + Sync {
    fn abort(&self);
    fn is_finished(&self) -> bool;
    /// A handle that may abort was made (an `AbortHandle`, or its clone).
    fn add_handle(&self) {}
    /// Such a handle, or the `JoinHandle`, was dropped.
    fn drop_handle(&self) {}
}

impl Abort for Shared {
    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// The task's future is gone (completed, panicked or cancelled).
    fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    fn add_handle(&self) {
        self.handles.fetch_add(1, Ordering::SeqCst);
    }

    fn drop_handle(&self) {
        if self.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            drop(self.waker.take());
        }
    }
}

/// Marks the task finished when the wrapper future is dropped, whatever the
/// reason, and releases the task's own waker so the allocation is not kept
/// alive by a reference to itself.
struct FinishOnDrop(Arc<Shared>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finished.store(true, Ordering::Release);
        drop(self.0.waker.take());
    }
}

pin_project! {
    /// The future a task really runs: the user's future plus abort and panic
    /// handling.
    struct Guarded<F> {
        #[pin]
        fut: Option<F>,
        done: FinishOnDrop,
    }

    impl<F> PinnedDrop for Guarded<F> {
        // async-task drops a task's future where a panic aborts the process
        // (a refused poll's `Runnable`, a cancelled task): the user's future
        // goes first, here, where its drop may panic harmlessly.
        fn drop(this: Pin<&mut Self>) {
            let _ = catch_unwind(AssertUnwindSafe(|| this.project().fut.set(None)));
        }
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = Quiet<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_outcome(cx).map(Quiet::new)
    }
}

impl<F: Future> Guarded<F> {
    fn poll_outcome(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<F::Output>> {
        let mut this = self.project();
        let shared = &this.done.0;
        // Register before reading the flag: an abort that lands after the
        // read then finds the waker and gets the task polled again.
        shared.keep_waker(cx);
        if shared.aborted.load(Ordering::Acquire) {
            // tokio drops an aborted task's future at its next poll; so do
            // we. A panicking destructor must not unwind into the worker.
            let _ = catch_unwind(AssertUnwindSafe(|| this.fut.set(None)));
            return Poll::Ready(Outcome::Aborted);
        }
        let Some(fut) = this.fut.as_mut().as_pin_mut() else {
            // async-task never polls a completed future; an empty slot can
            // only mean the future was already dropped by an abort.
            return Poll::Ready(Outcome::Aborted);
        };
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            // Dropped now, so that a panic in its drop is the task's panic
            // (as in tokio), not lost in `PinnedDrop`.
            Ok(Poll::Ready(value)) => match catch_unwind(AssertUnwindSafe(|| this.fut.set(None))) {
                Ok(()) => Poll::Ready(Outcome::Done(value)),
                Err(payload) => {
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
                    Poll::Ready(Outcome::Panicked(payload))
                }
            },
            Err(payload) => {
                let _ = catch_unwind(AssertUnwindSafe(|| this.fut.set(None)));
                Poll::Ready(Outcome::Panicked(payload))
            }
        }
    }
}

/// Queues one poll of a task on `wq`.
///
/// When the queue refuses (it was destroyed, or is draining and the wake-up
/// came from outside it), `execute_runnable` drops the `Runnable`;
/// async-task then cancels the task, so its [`JoinHandle`] resolves to a
/// cancelled [`JoinError`] instead of hanging.
fn queue_poll(wq: &Workqueue, runnable: Runnable) -> Result<(), Error> {
    wq.execute_runnable(runnable)
}

/// Builds a task for `fut` whose polls run on `wq`; the caller queues the
/// first poll.
fn build<F>(wq: &Workqueue, fut: F) -> (Runnable, JoinHandle<F::Output>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let shared = Arc::new(Shared::new());
    let guarded = Guarded { fut: Some(fut), done: FinishOnDrop(Arc::clone(&shared)) };
    let sched_wq = wq.clone();
    let schedule = move |runnable: Runnable| {
        // A refusal cancels the task (see `queue_poll`) and the JoinHandle
        // reports it, so the error needs no other handling here.
        let _ = queue_poll(&sched_wq, runnable);
    };
    let (runnable, task) = async_task::spawn(guarded, schedule);
    let handle = JoinHandle { awaits: Awaits::Task { task: Some(task.fallible()), shared }, id: Id::next() };
    (runnable, handle)
}

/// Spawns `fut` on `wq`; `Err` if the queue refused the first poll (the task
/// is then already cancelled and dropped).
pub(crate) fn try_spawn<F>(wq: &Workqueue, fut: F) -> Result<JoinHandle<F::Output>, Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (runnable, handle) = build(wq, fut);
    queue_poll(wq, runnable)?;
    Ok(handle)
}

/// Spawns `fut` on `wq`. A refused first poll yields a handle that resolves
/// to a cancelled [`JoinError`].
pub(crate) fn spawn<F>(wq: &Workqueue, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (runnable, handle) = build(wq, fut);
    let _ = queue_poll(wq, runnable);
    handle
}

/// An opaque id of a task or blocking closure, unique in the process.
/// Mirrors `tokio::task::Id`: compare, hash and print it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(NonZeroU64);

impl Id {
    fn next() -> Id {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Id(NonZeroU64::new(NEXT.fetch_add(1, Ordering::Relaxed)).expect("2^64 tasks"))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An owned permission to await a task spawned on a workqueue, or a
/// blocking closure sent to one.
///
/// It mirrors `tokio::task::JoinHandle`: awaiting it gives
/// `Ok(output)`, or a [`JoinError`] if the task panicked or was cancelled.
/// **Dropping it detaches the task**, which keeps running to completion
/// (unlike a bare `async_task::Task`, which cancels on drop). A detached
/// task that can never be woken again (no [`AbortHandle`] is left, and
/// every waker its future gave out is gone) is dropped, as async-task
/// drops such a task. A finished task's output that nobody takes is
/// dropped quietly: a panic in its `Drop` is swallowed, as in tokio.
///
/// A task is cancelled by [`abort`](Self::abort), or when its queue refuses
/// to run one of its polls: after `Workqueue::destroy`, or while the queue
/// drains if the wake-up came from outside the queue. The future is then
/// dropped without being polled again and the handle reports
/// [`JoinError::is_cancelled`]. A blocking closure
/// ([`WorkqueueExt::spawn_blocking`](crate::WorkqueueExt::spawn_blocking)) is
/// cancelled the same ways, but only before it starts: once running it
/// finishes, as in tokio.
pub struct JoinHandle<T> {
    awaits: Awaits<T>,
    id: Id,
}

// As tokio's: the handle gives out the output or the panic payload, never
// a reference into a state that a panic could leave half-changed.
impl<T> UnwindSafe for JoinHandle<T> {}
impl<T> RefUnwindSafe for JoinHandle<T> {}

/// What a handle awaits.
enum Awaits<T> {
    /// A future: `task` is `None` once the output was taken.
    Task { task: Option<FallibleTask<Quiet<T>>>, shared: Arc<Shared> },
    /// A blocking closure: `None` once the output was taken.
    Call(Option<Arc<dyn CallHandle<T>>>),
}

impl<T> JoinHandle<T> {
    pub(crate) fn from_call(call: Arc<dyn CallHandle<T>>) -> JoinHandle<T> {
        JoinHandle { awaits: Awaits::Call(Some(call)), id: Id::next() }
    }

    /// Asks the task to stop.
    ///
    /// If the task has not finished, its future is dropped at its next
    /// scheduled poll (immediately queued if it was waiting) and awaiting
    /// the handle gives [`JoinError::is_cancelled`]. A poll that is running
    /// right now finishes first; if that poll completes the future, the
    /// output wins, as in tokio. Aborting a finished task does nothing.
    ///
    /// A blocking closure is cancelled if it has not started (it is dropped
    /// unrun); once it runs, it finishes and the handle gives its result.
    pub fn abort(&self) {
        match &self.awaits {
            Awaits::Task { shared, .. } => shared.abort(),
            Awaits::Call(Some(call)) => call.abort(),
            Awaits::Call(None) => {}
        }
    }

    /// Whether the task has finished: completed, panicked or cancelled.
    /// Awaiting the handle then does not wait.
    pub fn is_finished(&self) -> bool {
        match &self.awaits {
            Awaits::Task { task: Some(task), .. } => task.is_finished(),
            Awaits::Call(Some(call)) => call.is_finished(),
            Awaits::Task { task: None, .. } | Awaits::Call(None) => true,
        }
    }

    /// The task's id, which its [`AbortHandle`]s and [`JoinError`] share.
    pub fn id(&self) -> Id {
        self.id
    }

    /// A handle that can abort the task without owning its output.
    pub fn abort_handle(&self) -> AbortHandle {
        let id = self.id;
        match &self.awaits {
            Awaits::Task { shared, .. } => {
                shared.add_handle();
                AbortHandle { target: Arc::clone(shared) as Arc<dyn Abort>, id }
            }
            Awaits::Call(Some(call)) => AbortHandle { target: Arc::clone(call) as Arc<dyn Abort>, id },
            Awaits::Call(None) => AbortHandle { target: Arc::new(Finished), id },
        }
    }
}

/// The abort target of a call whose output was already taken.
struct Finished;

impl Abort for Finished {
    fn abort(&self) {}

    fn is_finished(&self) -> bool {
        true
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        match &mut self.awaits {
            Awaits::Task { task, .. } => {
                let running = task.as_mut().expect("JoinHandle polled after it returned its result");
                let outcome = match Pin::new(running).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(outcome) => outcome,
                };
                *task = None;
                Poll::Ready(match outcome.map(Quiet::take) {
                    Some(Outcome::Done(value)) => Ok(value),
                    Some(Outcome::Panicked(payload)) => Err(JoinError::panic(payload, id)),
                    Some(Outcome::Aborted) | None => Err(JoinError::cancelled(id)),
                })
            }
            Awaits::Call(slot) => {
                let call = slot.as_ref().expect("JoinHandle polled after it returned its result");
                let result = std::task::ready!(call.shared().poll_result(cx, id));
                *slot = None;
                Poll::Ready(result)
            }
        }
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Awaits::Task { task, shared } = &mut self.awaits {
            // A finished task's output is dropped here, quietly (`Quiet`).
            if let Some(task) = task.take() {
                task.detach();
            }
            shared.drop_handle();
        }
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle").field("finished", &self.is_finished()).finish()
    }
}

/// Aborts a task without owning its output; cheap to clone.
/// Mirrors `tokio::task::AbortHandle`.
pub struct AbortHandle {
    target: Arc<dyn Abort>,
    id: Id,
}

impl UnwindSafe for AbortHandle {}
impl RefUnwindSafe for AbortHandle {}

impl Clone for AbortHandle {
    fn clone(&self) -> AbortHandle {
        self.target.add_handle();
        AbortHandle { target: Arc::clone(&self.target), id: self.id }
    }
}

impl Drop for AbortHandle {
    fn drop(&mut self) {
        self.target.drop_handle();
    }
}

impl AbortHandle {
    /// The id of the task it aborts.
    pub fn id(&self) -> Id {
        self.id
    }

    /// Same as [`JoinHandle::abort`].
    pub fn abort(&self) {
        self.target.abort();
    }

    /// Whether the task's future is gone, or the blocking closure finished
    /// or was cancelled.
    pub fn is_finished(&self) -> bool {
        self.target.is_finished()
    }
}

impl fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortHandle").field("finished", &self.is_finished()).finish()
    }
}

enum Repr {
    Cancelled,
    /// The mutex only makes the payload `Sync`, so that `JoinError` fits in
    /// a `Box<dyn Error + Send + Sync>`; it is never contended.
    Panic(Mutex<Box<dyn Any + Send + 'static>>),
}

/// Why a task produced no output: it panicked or was cancelled.
/// Mirrors `tokio::task::JoinError`.
pub struct JoinError {
    repr: Repr,
    id: Id,
}

impl JoinError {
    pub(crate) fn cancelled(id: Id) -> Self {
        JoinError { repr: Repr::Cancelled, id }
    }

    pub(crate) fn panic(payload: Box<dyn Any + Send + 'static>, id: Id) -> Self {
        JoinError { repr: Repr::Panic(Mutex::new(payload)), id }
    }

    /// The id of the task that failed.
    pub fn id(&self) -> Id {
        self.id
    }

    /// The task was aborted, or its queue refused to run it.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.repr, Repr::Cancelled)
    }

    /// The task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.repr, Repr::Panic(_))
    }

    /// The panic payload, to resume with `std::panic::resume_unwind`.
    ///
    /// # Panics
    ///
    /// If the error is not a panic (check [`is_panic`](Self::is_panic) or use
    /// [`try_into_panic`](Self::try_into_panic)), as in tokio.
    #[track_caller]
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.try_into_panic().expect("`JoinError` reason is not a panic.")
    }

    /// The panic payload, or the error back if the task was cancelled.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, JoinError> {
        match self.repr {
            Repr::Panic(payload) => Ok(payload.into_inner().unwrap_or_else(|e| e.into_inner())),
            Repr::Cancelled => Err(self),
        }
    }

    /// The panic message when the payload is a string (what `panic!` makes).
    pub fn panic_message(&self) -> Option<String> {
        match &self.repr {
            Repr::Cancelled => None,
            Repr::Panic(payload) => {
                let payload = payload.lock().unwrap_or_else(|e| e.into_inner());
                payload_message(&**payload).map(str::to_owned)
            }
        }
    }
}

fn payload_message(payload: &(dyn Any + Send)) -> Option<&str> {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        Some(s)
    } else {
        payload.downcast_ref::<String>().map(String::as_str)
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Cancelled => write!(f, "task {} was cancelled", self.id),
            Repr::Panic(_) => match self.panic_message() {
                Some(msg) => write!(f, "task {} panicked with message {msg:?}", self.id),
                None => write!(f, "task {} panicked", self.id),
            },
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Cancelled => write!(f, "JoinError::Cancelled({:?})", self.id),
            Repr::Panic(_) => match self.panic_message() {
                Some(msg) => write!(f, "JoinError::Panic({:?}, {msg:?}, ...)", self.id),
                None => write!(f, "JoinError::Panic({:?}, ...)", self.id),
            },
        }
    }
}

impl std::error::Error for JoinError {}

impl From<JoinError> for std::io::Error {
    fn from(err: JoinError) -> Self {
        std::io::Error::other(err.to_string())
    }
}
