//! Running blocking closures on a workqueue from async code.

use std::fmt;
use std::future::Future;
use std::panic::resume_unwind;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wq_core::Workqueue;

use crate::task::{self, JoinHandle};

type BoxedFn<T> = Box<dyn FnOnce() -> T + Send + 'static>;
type Slot<T> = Arc<Mutex<Option<BoxedFn<T>>>>;

fn take<T>(slot: &Slot<T>) -> Option<BoxedFn<T>> {
    slot.lock().unwrap_or_else(|e| e.into_inner()).take()
}

enum State<T> {
    /// The closure was queued; its result comes through the handle. The
    /// slot still holds the closure until a worker takes it.
    Queued(JoinHandle<T>, Slot<T>),
    /// The queue refused the closure; it runs at the first poll.
    Refused(Option<BoxedFn<T>>),
}

/// The result of a closure sent to a workqueue by [`unblock`] or
/// [`unblock_on`]: a future giving the closure's return value.
///
/// A panic in the closure is resumed in the task that awaits this future,
/// as with smol's `blocking::unblock`. Dropping the future does not stop a
/// closure that has been queued: it still runs, its result is dropped.
#[must_use = "the closure's result is lost unless the future is awaited"]
pub struct Unblock<T> {
    state: State<T>,
}

impl<T> Future for Unblock<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.state {
            State::Queued(handle, slot) => match Pin::new(handle).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(value)) => Poll::Ready(value),
                Poll::Ready(Err(err)) => match err.try_into_panic() {
                    Ok(payload) => resume_unwind(payload),
                    // Cancelled: the queue dropped the task without running
                    // it (its runtime went away), so the closure is still in
                    // the slot; a task that took it completes or panics.
                    Err(err) => match take(slot) {
                        Some(f) => Poll::Ready(wq_core::blocking(f)),
                        None => unreachable!("unblock closure taken by a cancelled task: {err}"),
                    },
                },
            },
            State::Refused(f) => {
                let f = f.take().expect("Unblock polled after it returned its result");
                // The caller's thread does the blocking call itself; on a
                // worker, say so, so that its pool can start another worker.
                Poll::Ready(wq_core::blocking(f))
            }
        }
    }
}

impl<T> fmt::Debug for Unblock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Queued(..) => "queued",
            State::Refused(_) => "refused: runs on the awaiting thread",
        };
        f.debug_struct("Unblock").field("state", &state).finish()
    }
}

/// Runs a blocking closure on `system_unbound_wq` and returns a future for
/// its result: a replacement for smol's `blocking::unblock`.
///
/// Unbound like smol's blocking pool: a burst of closures from one task
/// spreads over every CPU instead of queueing on the caller's (a bound queue
/// keeps each item on the CPU that queued it).
///
/// ```
/// use wq_futures::{block_on, unblock};
///
/// let len = block_on(unblock(|| std::fs::read("Cargo.toml").map(|b| b.len())));
/// assert!(len.unwrap() > 0);
/// ```
pub fn unblock<T, F>(f: F) -> Unblock<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    unblock_on(wq_core::system_unbound_wq(), f)
}

/// Runs a blocking closure on `wq` and returns a future for its result.
///
/// If the queue refuses the closure (it was destroyed), the closure is not
/// lost: it runs on the thread that first polls the returned future, marked
/// with [`wq_core::blocking`].
pub fn unblock_on<T, F>(wq: &Workqueue, f: F) -> Unblock<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    // The slot lets us take the closure back if the queue refuses the task
    // (the refused task's future, holding only the slot, is dropped).
    let slot: Slot<T> = Arc::new(Mutex::new(Some(Box::new(f))));
    let task_slot = Arc::clone(&slot);
    let job = async move {
        let f = take(&task_slot).expect("unblock closure taken twice");
        f()
    };
    let state = match task::try_spawn(wq, job) {
        Ok(handle) => State::Queued(handle, slot),
        Err(_) => State::Refused(take(&slot)),
    };
    Unblock { state }
}
