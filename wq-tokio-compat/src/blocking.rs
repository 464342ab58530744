//! `spawn_blocking`, `block_in_place` and queue shutdown.

use std::fmt;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};
use wq_core::{Error, Runtime, Workqueue};
use wq_futures::{JoinHandle, WorkqueueExt};

/// Name of the queue behind [`spawn_blocking`].
pub const BLOCKING_QUEUE_NAME: &str = "tokio_blocking";

/// The queue [`spawn_blocking`] uses: an unbound, concurrency-managed
/// queue named [`BLOCKING_QUEUE_NAME`], built on the global runtime the
/// first time it is needed.
///
/// Unbound like tokio's blocking pool, so a burst of calls from one task
/// spreads over every CPU; concurrency-managed rather than one thread per
/// call: closures that burn CPU keep about one worker per CPU busy and no
/// extra thread starts for them; a closure that sleeps (detected by the
/// runtime, or declared with [`block_in_place`]) lets the pool start
/// another worker. `max_active` is the default (1024 closures in flight).
pub fn blocking_queue() -> &'static Workqueue {
    static QUEUE: OnceLock<Workqueue> = OnceLock::new();
    QUEUE.get_or_init(|| {
        // The settings are constants the builder accepts; should the global
        // runtime still fail to provide the queue, the kernel's own queue
        // for long items is the right stand-in.
        blocking_queue_on(wq_core::Runtime::global()).unwrap_or_else(|_| wq_core::system_long_wq().clone())
    })
}

/// Builds a queue with the settings of [`blocking_queue`] on the runtime
/// `rt`: for embedding, tests and benchmarks that want `spawn_blocking`'s
/// behaviour on a runtime of their own (use it with [`spawn_blocking_on`]).
pub fn blocking_queue_on(rt: &Runtime) -> Result<Workqueue, Error> {
    rt.workqueue(BLOCKING_QUEUE_NAME).flags(wq_core::Flags::UNBOUND).build()
}

/// Runs `f` on the [`blocking_queue`] and returns a handle to its result;
/// the same signature and behaviour as `tokio::task::spawn_blocking`, so a
/// tokio program migrates by changing its `use` line.
///
/// - Works from anywhere: inside a tokio runtime (either flavour), on a wq
///   worker, or on a plain thread with no runtime at all.
/// - `f` runs inside the context of the tokio runtime current at the call,
///   as on tokio's blocking threads: `Handle::current()` (and its
///   `block_on`), `tokio::spawn` and `tokio::time` work in it. Called
///   outside any runtime, `f` gets none.
/// - Awaiting the handle gives `Ok(value)`, or a [`JoinError`](crate::JoinError)
///   whose `is_panic()` is true if `f` panicked (the worker survives).
/// - `abort()` before `f` starts cancels it (`is_cancelled()`); once `f`
///   runs it finishes and the handle gives its value.
/// - Dropping the handle detaches: `f` still runs.
///
/// ```
/// # wq_futures::block_on(async {
/// let len = wq_tokio_compat::spawn_blocking(|| std::fs::read("Cargo.toml").map(|b| b.len()))
///     .await
///     .expect("did not panic");
/// assert!(len.unwrap() > 0);
/// # });
/// ```
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    spawn_blocking_on(blocking_queue(), f)
}

/// Like [`spawn_blocking`], on the queue `wq`: pick a `CPU_INTENSIVE`
/// queue for hashing, an ordered queue for an append-only writer, a queue
/// with a small `max_active` to limit a resource.
///
/// If `wq` refuses the closure (it was destroyed), the closure is dropped
/// without running and the handle gives a cancelled `JoinError`, as
/// tokio's does after its runtime shut down.
pub fn spawn_blocking_on<F, R>(wq: &Workqueue, f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    // tokio enters the runtime on its blocking threads, and code written
    // for them calls `Handle::current().block_on(..)` or `tokio::spawn`
    // there; on a wq worker those panicked without this.
    let context = Handle::try_current().ok();
    wq.spawn_blocking(move || {
        let _entered = context.as_ref().map(Handle::enter);
        f()
    })
}

/// Runs a blocking closure in place, telling whoever schedules this thread
/// that it will block.
///
/// - On a wq worker (inside [`spawn_blocking`], [`spawn_on`](crate::spawn_on)
///   or any work item), the worker is marked as sleeping for the call
///   ([`wq_core::blocking`]) so its pool starts another worker for pending
///   work at once.
/// - Inside a tokio multi-thread runtime, defers to
///   `tokio::task::block_in_place`, which hands the worker's other tasks to
///   another thread.
/// - Elsewhere (a plain thread, a current-thread runtime, where tokio's
///   version would panic) it just runs `f`. One case is told apart only by
///   trying: a current-thread runtime's thread that entered a multi-thread
///   runtime's handle. tokio's version refuses there with a panic, which
///   this catches before running `f`; the panic hook still prints its
///   message, and under `panic = "abort"` the process aborts.
pub fn block_in_place<F, R>(f: F) -> R
where
    F: FnOnce() -> R,
{
    if wq_core::is_worker_thread() {
        return wq_core::blocking(f);
    }
    let multi_thread = Handle::try_current().map(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread).unwrap_or(false);
    if !multi_thread {
        return f();
    }
    // tokio refuses (panics before calling `f`) when the thread is inside a
    // current-thread runtime's `block_on` that entered a multi-thread
    // handle. Keep `f` reachable so it can still run in that case.
    let mut slot = Some(f);
    let result = catch_unwind(AssertUnwindSafe(|| {
        tokio::task::block_in_place(|| {
            let f = slot.take().expect("closure present until called");
            f()
        })
    }));
    match (result, slot) {
        (Ok(value), _) => value,
        (Err(_refused), Some(f)) => f(),
        (Err(panic), None) => resume_unwind(panic),
    }
}

/// [`shutdown_timeout`] gave up waiting; the shutdown goes on in the
/// background.
#[derive(Debug, Clone)]
pub struct ShutdownTimedOut {
    queue: String,
    timeout: Duration,
}

impl fmt::Display for ShutdownTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workqueue {:?} still had blocking work after {:?}; it finishes in the background",
            self.queue, self.timeout
        )
    }
}

impl std::error::Error for ShutdownTimedOut {}

/// How much longer than its timeout `shutdown_timeout` waits for a queue
/// with nothing in flight when the time runs out: the helper thread's
/// start, not any work.
const IDLE_GRACE: Duration = Duration::from_millis(200);

/// Shuts a queue down like tokio's `Runtime::shutdown_timeout` does its
/// blocking pool: no new closure is accepted, the queued and running ones
/// run to the end, and the caller waits for them for at most `timeout`.
///
/// Returns `Ok(Ok(()))` when everything finished in time (at once for a
/// queue already shut down; a queue with nothing in flight when the time
/// runs out gets up to 200 ms more, for the waiting thread to start), `Ok(Err(_))` when the time ran out (the
/// remaining closures still run to the end on their workers, as tokio
/// leaves its blocking threads running), and `Err(_)` when the queue cannot
/// be shut down: the call comes from one of the queue's own items
/// ([`Error::WouldDeadlock`]: it would wait for itself), delayed work is
/// armed on it ([`Error::DelayedWorkArmed`]), or the waiting thread could
/// not start ([`Error::Spawn`]).
///
/// After the shutdown, [`spawn_blocking_on`] the queue gives handles that
/// resolve to a cancelled `JoinError`.
pub fn shutdown_timeout(wq: &Workqueue, timeout: Duration) -> Result<Result<(), ShutdownTimedOut>, Error> {
    // `destroy` makes this check too, but on the helper thread below, which
    // runs no item: made there, it would let the caller wait for itself.
    if wq.is_current() {
        return Err(Error::WouldDeadlock(format!(
            "shutdown_timeout of {:?} called from one of its own work items",
            wq.name()
        )));
    }
    if wq.is_destroyed() {
        return Ok(Ok(()));
    }
    let (tx, rx) = mpsc::channel();
    let queue = wq.clone();
    // `destroy` waits for the queue to drain and has no deadline of its own:
    // wait for it on a helper thread so the caller can stop waiting.
    thread::Builder::new()
        .name(format!("wq-shutdown:{}", wq.name()))
        .spawn(move || {
            let _ = tx.send(queue.destroy());
        })
        .map_err(|err| Error::Spawn(std::io::Error::new(err.kind(), format!("the shutdown helper thread: {err}"))))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result.map(Ok),
        // Nothing left to run: the helper's `destroy` ends as soon as it has
        // run (a timeout shorter than a thread's start is no "blocking
        // work"). Waited for a short grace only: work queued before the
        // helper raised `draining` would be waited for.
        Err(_) if wq.stats().in_flight == 0 => match rx.recv_timeout(IDLE_GRACE) {
            Ok(result) => result.map(Ok),
            Err(_) => Ok(Err(ShutdownTimedOut { queue: wq.name().to_owned(), timeout })),
        },
        Err(_) => Ok(Err(ShutdownTimedOut { queue: wq.name().to_owned(), timeout })),
    }
}
