//! The explicit hooks: user code tells the runtime that the calling worker
//! sleeps (the kernel's `wq_worker_sleeping()`, called by hand), or that its
//! sleeps are not worth another worker.

use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::{current_wq_id, WorkerShared, BLOCKING, CURRENT, IGNORE_SLEEPS, SLEEPING, WORKER};
use crate::pool::Pool;
use crate::trace::TraceKind;

thread_local! {
    /// Nesting depth of `blocking` on this thread: only the outermost call counts.
    static BLOCKING_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f`, telling the runtime that the calling worker sleeps meanwhile.
///
/// This is the explicit form of the kernel's `wq_worker_sleeping()`: while
/// `f` runs, the worker does not count as running, so if work is pending on
/// its pool another worker starts. Wrap calls that block (I/O, locks,
/// `sleep`, waiting on channels) in it. Nested calls count once; on a
/// thread that is not running a work item it simply runs `f`.
///
/// ```
/// let wq = wq_core::Workqueue::builder("io").build().unwrap();
/// let done = wq
///     .submit(|| wq_core::blocking(|| std::thread::sleep(std::time::Duration::from_millis(5))))
///     .unwrap();
/// done.wait().unwrap();
/// ```
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    let _guard = BlockingGuard::enter();
    f()
}

/// Runs `f` telling the sleep detector that the calling worker's sleeps
/// inside it are not worth another worker: it keeps counting as running.
/// For CPU-hog detection the section counts as a sleep: the hog threshold
/// counts the CPU time used after it.
///
/// For waits that another worker could not shorten because it would wait
/// on the same thing — a Python worker taking the GIL is the case it was
/// made for. On a thread that is not a worker it simply runs `f`.
pub fn ignore_sleeps<R>(f: impl FnOnce() -> R) -> R {
    let _guard = IgnoreSleepsGuard::enter();
    f()
}

/// Runs `f` telling the sleep detector to act on the calling worker's
/// futex waits (locks, condition variables) only once they lasted `d`.
///
/// For code whose short lock waits are not I/O another worker could
/// overlap: a Python worker is made to hand the GIL over every switch
/// interval (5 ms), a futex wait no other worker could shorten. Sleeps in
/// timers or I/O (`time.sleep`, sockets, files) are still acted on at
/// once; the OS says which is which through `/proc/<tid>/wchan`, and where
/// it does not, every sleep waits `d`. Nested calls use the innermost `d`;
/// on a thread that is not a worker it simply runs `f`.
pub fn min_sleep<R>(d: Duration, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<(Arc<WorkerShared>, u64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some((me, before)) = self.0.take() {
                me.min_sleep_ns.store(before, Relaxed);
            }
        }
    }
    let me = WORKER.with(|w| w.borrow().as_ref().map(|(_, me)| me.clone()));
    let _restore = Restore(me.map(|me| {
        let before = me.min_sleep_ns.swap(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        (me, before)
    }));
    f()
}

struct IgnoreSleepsGuard(Option<(Arc<Pool>, Arc<WorkerShared>)>);

impl IgnoreSleepsGuard {
    fn enter() -> IgnoreSleepsGuard {
        let Some((pool, me)) = WORKER.with(|w| w.borrow().clone()) else { return IgnoreSleepsGuard(None) };
        if me.mark(IGNORE_SLEEPS, true) & IGNORE_SLEEPS != 0 {
            return IgnoreSleepsGuard(None);
        }
        // A sleep seen just before counts no more.
        me.clr_flags(&pool, SLEEPING);
        IgnoreSleepsGuard(Some((pool, me)))
    }
}

impl Drop for IgnoreSleepsGuard {
    fn drop(&mut self) {
        if let Some((_, me)) = self.0.take() {
            me.mark(IGNORE_SLEEPS, false);
            // The wait is not worth another worker, but it is a wait: the
            // CPU the thread used while making it (a contended lock's
            // wake-ups) is not the item hogging the CPU.
            me.mon_slept.store(true, Relaxed);
        }
    }
}

struct BlockingGuard(Option<(Arc<Pool>, Arc<WorkerShared>)>);

impl BlockingGuard {
    fn enter() -> BlockingGuard {
        let depth = BLOCKING_DEPTH.with(|d| d.replace(d.get() + 1));
        if depth > 0 || current_wq_id().is_none() {
            return BlockingGuard(None);
        }
        let Some((pool, me)) = WORKER.with(|w| w.borrow().clone()) else {
            return BlockingGuard(None);
        };
        me.trace(&pool, TraceKind::Sleep);
        if me.set_flags(&pool, BLOCKING) && pool.worker_stopped_running(&me) {
            CURRENT.with(|c| {
                if let Some(c) = c.borrow().as_ref() {
                    c.link.wq.counters.cm_wakeups.fetch_add(1, Relaxed);
                }
            });
        }
        BlockingGuard(Some((pool, me)))
    }
}

impl Drop for BlockingGuard {
    fn drop(&mut self) {
        BLOCKING_DEPTH.with(|d| d.set(d.get() - 1));
        if let Some((pool, me)) = self.0.take() {
            me.clr_flags(&pool, BLOCKING);
            me.trace(&pool, TraceKind::Wake);
        }
    }
}
