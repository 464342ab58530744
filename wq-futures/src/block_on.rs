//! Running a future to completion on the calling thread.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

/// Wakes the blocked thread.
struct Parker {
    thread: Thread,
    notified: AtomicBool,
}

impl Wake for Parker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.notified.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Polls `fut` on the calling thread until it completes, parking the thread
/// while it waits; for `main` functions and tests.
///
/// On a workqueue worker the waits are wrapped in [`wq_core::blocking`], so
/// the pool knows the worker sleeps and lets another worker run its other
/// items meanwhile (the waited-for task may well be one of them). That
/// does not lift a queue's own limit: inside an item of an ordered queue,
/// or one with `max_active` 1, waiting for a later item of the same queue
/// waits for ever, as the blocked item holds the only active slot (as
/// `Workqueue::flush` would, which refuses; `block_on` cannot know what the
/// future waits for).
///
/// ```
/// use wq_futures::{block_on, WorkqueueExt};
///
/// let answer = block_on(wq_core::system_wq().spawn(async { 6 * 7 }));
/// assert_eq!(answer.unwrap(), 42);
/// ```
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let parker = Arc::new(Parker { thread: thread::current(), notified: AtomicBool::new(false) });
    let waker = Waker::from(Arc::clone(&parker));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = fut.as_mut().poll(&mut cx) {
            return output;
        }
        // `park` may return spuriously; only a wake-up ends the wait.
        if !parker.notified.swap(false, Ordering::Acquire) {
            wq_core::blocking(|| {
                while !parker.notified.swap(false, Ordering::Acquire) {
                    thread::park();
                }
            });
        }
    }
}
