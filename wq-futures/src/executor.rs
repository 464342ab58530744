//! Spawning on a workqueue: the extension trait and the `Spawn` executor.

use std::fmt;
use std::future::Future;

use futures::task::{FutureObj, Spawn, SpawnError};
use wq_core::{Error, Workqueue};

use crate::task::{self, JoinHandle};

/// Runs futures on a [`Workqueue`]: each poll of the task is one work item
/// on the queue, so its flags and limits apply to polls.
///
/// - `HIGHPRI`: polls run on the high-priority pools.
/// - `max_active = n`: at most `n` polls of the queue's tasks run at once
///   (per CPU for a bound queue).
/// - an ordered queue polls its tasks one at a time, in wake order.
/// - a bound queue queues a wake-up on the pool of the CPU that woke it.
pub trait WorkqueueExt {
    /// Spawns `fut` and returns a handle to await its output.
    ///
    /// Never fails: if the queue refuses the task (it was destroyed), the
    /// handle resolves to a cancelled [`JoinError`](crate::JoinError).
    /// Use [`try_spawn`](Self::try_spawn) to learn of the refusal at once.
    fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;

    /// Spawns `fut`, or returns the queue's refusal (`Error::Destroyed`,
    /// `Error::Draining`) without running it.
    fn try_spawn<F>(&self, fut: F) -> Result<JoinHandle<F::Output>, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;

    /// Runs the blocking closure `f` as one work item on the queue and
    /// returns a handle to its result, like `tokio::task::spawn_blocking`.
    ///
    /// Cheaper than spawning a future that calls `f`: the closure, its
    /// result and the awaiting task's waker share one allocation. The
    /// handle is the same [`JoinHandle`]: a panic comes back as a
    /// [`JoinError`](crate::JoinError), `abort` cancels `f` if it has not
    /// started, dropping the handle detaches `f`. If the queue refuses `f`
    /// (it was destroyed), `f` is dropped unrun and the handle gives a
    /// cancelled error.
    fn spawn_blocking<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;

    /// An [`Executor`] handle for libraries that take a
    /// `futures::task::Spawn`.
    fn executor(&self) -> Executor;
}

impl WorkqueueExt for Workqueue {
    fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        task::spawn(self, fut)
    }

    fn try_spawn<F>(&self, fut: F) -> Result<JoinHandle<F::Output>, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        task::try_spawn(self, fut)
    }

    fn spawn_blocking<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        crate::call::spawn_blocking(self, f)
    }

    fn executor(&self) -> Executor {
        Executor::new(self.clone())
    }
}

/// Spawns `fut` on `system_wq`, the kernel's default queue for short items.
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    task::spawn(wq_core::system_wq(), fut)
}

/// A workqueue seen as a futures executor: implements
/// `futures::task::Spawn`, so code written against that trait runs its tasks
/// on the queue unchanged. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    wq: Workqueue,
}

impl Executor {
    /// An executor whose tasks are polled on `wq`.
    pub fn new(wq: Workqueue) -> Self {
        Executor { wq }
    }

    /// The queue the tasks run on.
    pub fn workqueue(&self) -> &Workqueue {
        &self.wq
    }

    /// Same as [`WorkqueueExt::spawn`] on the executor's queue.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        task::spawn(&self.wq, fut)
    }
}

impl Spawn for Executor {
    /// Spawns a detached task; `SpawnError::shutdown()` if the queue refused
    /// it (destroyed or draining).
    fn spawn_obj(&self, future: FutureObj<'static, ()>) -> Result<(), SpawnError> {
        // Dropping the handle detaches the task: `Spawn` has no handle.
        task::try_spawn(&self.wq, future).map(drop).map_err(|_| SpawnError::shutdown())
    }
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor").field("workqueue", &self.wq.name()).finish()
    }
}
