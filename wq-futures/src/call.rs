//! Blocking calls: a closure queued as one work item, awaited through the
//! same [`JoinHandle`] as a task.
//!
//! A task pays for an `async-task` allocation, a waker protocol and a
//! clone of its queue held by the schedule function. A closure that runs
//! once needs none of that: [`spawn_blocking`] puts the closure, its result
//! slot and the waker of whoever awaits it in one allocation, [`Call`], and
//! queues that `Arc` itself with `Workqueue::execute_shared`: one
//! allocation per call. On an unbound queue, a detached call's worker
//! hands the allocation back for a later call (`wq_core::recycle`).
//!
//! # States
//!
//! `Call::state` moves forward only:
//!
//! ```text
//! QUEUED --worker claims--> RUNNING --result stored--> DONE
//!    \--abort (or the queue refused)--> CANCELLED
//! ```
//!
//! - Only the worker moves `QUEUED -> RUNNING`, and only `abort` (or
//!   `spawn_blocking` on a refusal) moves `QUEUED -> CANCELLED`; both are
//!   compare-exchanges, so exactly one of "runs" and "cancelled" happens.
//! - `result` is written once, by the worker, before it stores `DONE`
//!   (release); the handle reads it only after loading `DONE` (acquire).
//! - The handle registers its waker *before* loading the state, and the
//!   worker wakes *after* storing it: a completion that lands between the
//!   two finds the waker, so no wake-up is lost (`AtomicWaker`'s contract).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use wq_core::{recycle, SharedItem, Workqueue};

use crate::task::{Abort, Id, JoinError, JoinHandle};

/// Queued; `abort` may still win.
const QUEUED: u8 = 0;
/// A worker took the closure; it runs to the end.
const RUNNING: u8 = 1;
/// The result (value or panic) is in `result`.
const DONE: u8 = 2;
/// Aborted, or refused by the queue, before it started: it never runs.
const CANCELLED: u8 = 3;

type Payload = Box<dyn Any + Send + 'static>;

/// The part of a call its [`JoinHandle`] sees, whatever the closure's type.
pub(crate) struct CallState<T> {
    state: AtomicU8,
    /// Written once by the worker before `DONE`; taken once by the handle.
    result: Mutex<Option<Result<T, Payload>>>,
    waker: AtomicWaker,
}

/// Whoever drops the last reference to a call drops an unclaimed result:
/// the worker, or a thread dropping a detached [`JoinHandle`] just after
/// the worker stored it. The result's `Drop` is user code, so a panic in
/// it must not unwind into either.
impl<T> Drop for CallState<T> {
    fn drop(&mut self) {
        let result = self.result.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        let _ = catch_unwind(AssertUnwindSafe(move || drop(result)));
    }
}

/// A queued closure and its result slot: the whole of a blocking call.
struct Call<T, F> {
    shared: CallState<T>,
    /// Taken by the worker that wins `QUEUED -> RUNNING`, or dropped by
    /// the side that cancels.
    f: Mutex<Option<F>>,
    /// The allocation comes from, and goes back to, `wq_core::recycle`.
    recycled: bool,
}

/// What a [`JoinHandle`] holds of a call: its state, with the closure's
/// type erased.
pub(crate) trait CallHandle<T>: Abort {
    fn shared(&self) -> &CallState<T>;
}

impl<T: Send, F: Send> CallHandle<T> for Call<T, F> {
    fn shared(&self) -> &CallState<T> {
        &self.shared
    }
}

impl<T: Send, F: Send> Abort for Call<T, F> {
    fn abort(&self) {
        if self.shared.state.compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.drop_closure();
            self.shared.waker.wake();
        }
    }

    fn is_finished(&self) -> bool {
        matches!(self.shared.state.load(Ordering::Acquire), DONE | CANCELLED)
    }
}

impl<T, F> Call<T, F> {
    /// Drops a closure that will never run; its captures' `Drop` must not
    /// unwind into a worker or the aborting caller.
    fn drop_closure(&self) {
        let f = self.f.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = catch_unwind(AssertUnwindSafe(move || drop(f)));
    }
}

impl<T, F> Call<T, F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    /// The worker's side: runs the closure unless it was cancelled, and
    /// publishes the result to whoever still holds a handle.
    fn claim_and_run(self: Arc<Self>) {
        let claimed = self.shared.state.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire);
        if claimed.is_err() {
            // Cancelled; the canceller dropped the closure.
            return;
        }
        let f = self.f.lock().unwrap_or_else(|e| e.into_inner()).take();
        let f = f.expect("only the worker that claimed the call takes its closure");
        let result = catch_unwind(AssertUnwindSafe(f));
        if Arc::strong_count(&self) == 1 {
            // Every handle is gone: nobody wants the value. Its `Drop`
            // (or the panic payload's) must not unwind into the worker.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(result)));
            self.shared.state.store(DONE, Ordering::Release);
            if self.recycled {
                // Kept values must hold nothing: a dropped handle may have
                // left its waker (the executor's code) registered.
                let waker = self.shared.waker.take();
                let _ = catch_unwind(AssertUnwindSafe(move || drop(waker)));
                recycle::give_back(self);
            }
            return;
        }
        *self.shared.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        self.shared.state.store(DONE, Ordering::Release);
        self.shared.waker.wake();
    }
}

impl<T> CallState<T> {
    /// The handle's poll: the result once the call is done or cancelled.
    pub(crate) fn poll_result(&self, cx: &mut Context<'_>, id: Id) -> Poll<Result<T, JoinError>> {
        // Register first: see "States" in the module docs.
        self.waker.register(cx.waker());
        match self.state.load(Ordering::Acquire) {
            DONE => {
                let result = self.result.lock().unwrap_or_else(|e| e.into_inner()).take();
                let result = result.expect("a call's result is taken once: the handle returns Ready once");
                Poll::Ready(result.map_err(|payload| JoinError::panic(payload, id)))
            }
            CANCELLED => Poll::Ready(Err(JoinError::cancelled(id))),
            _ => Poll::Pending,
        }
    }
}

/// Queues `f` on `wq` as one work item; see [`WorkqueueExt::spawn_blocking`](crate::WorkqueueExt::spawn_blocking).
pub(crate) fn spawn_blocking<F, T>(wq: &Workqueue, f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let recycled = recycle::pays_off_on(wq);
    let call = Call {
        shared: CallState { state: AtomicU8::new(QUEUED), result: Mutex::new(None), waker: AtomicWaker::new() },
        f: Mutex::new(Some(f)),
        recycled,
    };
    let call = if recycled { recycle::arc(call) } else { Arc::new(call) };
    // A refusal discards the call, which cancels it, so the handle reports
    // a cancellation, as tokio's does once its runtime shut down.
    let _ = wq.execute_shared(Arc::clone(&call));
    JoinHandle::from_call(call)
}

/// The call is its own work item: queueing it allocates nothing more.
impl<T, F> SharedItem for Call<T, F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Arc<Self>) {
        self.claim_and_run();
    }

    /// Dropped unrun (refused, or discarded from a worklist): cancel it,
    /// so no handle ever waits for a closure that will not run.
    fn discard(self: Arc<Self>) {
        self.abort();
    }
}
