//! Polling tokio futures on workqueue workers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use wq_core::Workqueue;
use wq_futures::{JoinHandle, WorkqueueExt};

pin_project! {
    /// A future whose polls (and drop) run with a tokio runtime's context
    /// entered, so tokio sockets, timers and `tokio::spawn` find their
    /// runtime while a wq worker polls them.
    struct Entered<F> {
        handle: Handle,
        #[pin]
        fut: Option<F>,
    }

    impl<F> PinnedDrop for Entered<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // tokio resources deregister from their driver when dropped.
            let _guard = this.handle.enter();
            this.fut.set(None);
        }
    }
}

impl<F: Future> Future for Entered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _guard = this.handle.enter();
        match this.fut.as_pin_mut() {
            Some(fut) => fut.poll(cx),
            // The slot is emptied only by drop, after which no poll comes.
            None => Poll::Pending,
        }
    }
}

/// Why [`spawn_on`] could not spawn.
#[derive(Debug)]
#[non_exhaustive]
pub enum SpawnOnError {
    /// `spawn_on` was called outside any tokio runtime; call it from inside
    /// one, or give a handle with [`spawn_on_handle`].
    NoRuntime(tokio::runtime::TryCurrentError),
    /// The workqueue refused the task (it was destroyed, or is draining).
    Refused(wq_core::Error),
}

impl fmt::Display for SpawnOnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnOnError::NoRuntime(err) => {
                write!(f, "spawn_on needs a tokio runtime ({err}); call it inside one or use spawn_on_handle")
            }
            SpawnOnError::Refused(err) => write!(f, "the workqueue refused the task: {err}"),
        }
    }
}

impl std::error::Error for SpawnOnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpawnOnError::NoRuntime(err) => Some(err),
            SpawnOnError::Refused(err) => Some(err),
        }
    }
}

/// Spawns a future that uses tokio (sockets, `tokio::time`, channels,
/// `tokio::spawn`) on the workqueue `wq`: its polls are work items on `wq`,
/// run with the current tokio runtime's context entered.
///
/// The runtime is the one current at the call (`Handle::try_current`);
/// outside any runtime this returns [`SpawnOnError::NoRuntime`] rather than
/// panicking.
///
/// If the tokio runtime shuts down while the task waits on one of its
/// resources, the resource fails as it would in a tokio task: I/O returns
/// errors, and a `tokio::time` timer panics, which the handle reports as a
/// `JoinError` with `is_panic()`.
///
/// ```
/// let rt = tokio::runtime::Runtime::new().unwrap();
/// let wq = wq_core::system_wq();
/// let value = rt.block_on(async {
///     let handle = wq_tokio_compat::spawn_on(&wq, async {
///         tokio::time::sleep(std::time::Duration::from_millis(5)).await;
///         7
///     })
///     .expect("inside a runtime");
///     handle.await.expect("did not panic")
/// });
/// assert_eq!(value, 7);
/// ```
pub fn spawn_on<F>(wq: &Workqueue, fut: F) -> Result<JoinHandle<F::Output>, SpawnOnError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = Handle::try_current().map_err(SpawnOnError::NoRuntime)?;
    wq.try_spawn(Entered { handle, fut: Some(fut) }).map_err(SpawnOnError::Refused)
}

/// Like [`spawn_on`] with the tokio runtime given explicitly, so it can be
/// called from any thread. A refusal by the queue gives a handle that
/// resolves to a cancelled `JoinError`.
pub fn spawn_on_handle<F>(wq: &Workqueue, handle: Handle, fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    wq.spawn(Entered { handle, fut: Some(fut) })
}
