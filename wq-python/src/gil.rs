//! How wq worker threads enter Python.
//!
//! A worker takes the GIL only to call Python and gives it back right after. It never enters a
//! finalizing interpreter: it checks `Py_IsInitialized` (as pyo3's `try_attach` does) behind
//! the exit hook's gate, which guarantees no item is left to run once finalization starts (on
//! CPython < 3.13 a thread that takes the GIL during finalization is ended with
//! `pthread_exit`, which must never happen to a Rust worker thread).
//!
//! Details that matter for speed and for cmwq's accounting:
//! - Each worker thread keeps one Python thread state for its whole life, as a
//!   `ThreadPoolExecutor` thread does. Otherwise every item would create and destroy a thread
//!   state; that measured as the largest per-item cost of the worker side (about 3x slower
//!   draining).
//! - The wait for the GIL runs inside [`wq_core::ignore_sleeps`]: another worker could not run
//!   Python either, so that wait must not make the pool start one. The callable itself runs
//!   outside it, so a callable that blocks with the GIL released (I/O, `time.sleep`) counts as
//!   asleep and another worker takes over.
//! - A worker about to take the GIL for a new call first yields its CPU when other workers are
//!   inside a call: those coming back from a sleep need the GIL only to finish their item,
//!   and on a bound pool they share the CPU with this worker. Without it, each new call won the
//!   GIL and the items waiting after their sleep piled up (about 5 ms each, a switch interval),
//!   each holding a worker thread: 29-33 threads for a workload that needs 21.
//! - Inside the callable, CPython makes a thread hand the GIL over every switch interval
//!   (5 ms) when another thread asks for it, and the wait to get it back looks like a sleep.
//!   The call runs under [`wq_core::min_sleep`] of the switch interval plus 1 ms: the detector
//!   then acts only on sleeps longer than such a hand-over, which real I/O waits are.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use pyo3::ffi;
use pyo3::prelude::*;

use crate::tracker;

/// `sys.getswitchinterval()` at import, in nanoseconds (CPython's default: 5 ms).
static SWITCH_INTERVAL_NS: AtomicU64 = AtomicU64::new(5_000_000);

/// Reads the interpreter's switch interval (called once, at import).
pub(crate) fn read_switch_interval(py: Python<'_>) -> PyResult<()> {
    let seconds: f64 = py.import("sys")?.getattr("getswitchinterval")?.call0()?.extract()?;
    if seconds.is_finite() && seconds > 0.0 {
        SWITCH_INTERVAL_NS.store((seconds * 1e9) as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// The interpreter's switch interval: how long a worker keeps running queued calls in one
/// attachment, as CPython would let a thread keep the GIL.
pub(crate) fn switch_interval() -> Duration {
    Duration::from_nanos(SWITCH_INTERVAL_NS.load(Ordering::Relaxed))
}

/// The shortest sleep inside a Python call that is worth another worker.
fn min_sleep() -> Duration {
    switch_interval() + Duration::from_millis(1)
}

/// Worker threads inside a Python call (see [`CallSection`]).
static IN_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Counts the calling worker as inside a Python call until dropped. Only one thread holds the
/// GIL at a time, so the others counted here are blocked (a sleep, I/O) or waiting for the GIL,
/// and each needs the GIL again to finish its item.
pub(crate) struct CallSection(());

impl CallSection {
    /// Enters the section.
    pub(crate) fn enter() -> CallSection {
        IN_CALLS.fetch_add(1, Ordering::Relaxed);
        CallSection(())
    }
}

impl Drop for CallSection {
    fn drop(&mut self) {
        IN_CALLS.fetch_sub(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// Whether this thread already owns a long-lived Python thread state.
    static HAS_THREAD_STATE: Cell<bool> = const { Cell::new(false) };
}

/// This thread's hold on the GIL, taken with `PyGILState_Ensure` and released on drop.
struct GilHold(ffi::PyGILState_STATE);

impl GilHold {
    /// Waits for the GIL (not counted as a sleep); `None` if the interpreter is not running.
    fn take() -> Option<GilHold> {
        // SAFETY: `Py_IsInitialized` may be called at any time.
        if unsafe { ffi::Py_IsInitialized() } == 0 || tracker::python_abandoned() {
            return None;
        }
        if IN_CALLS.load(Ordering::Relaxed) > 0 {
            // Workers coming back from a blocking call (a sleep, I/O) wait for the GIL to
            // finish their item; they share this CPU on a bound pool. Let them take the GIL
            // first: each needs it only briefly, while this worker is about to start a new
            // call. Otherwise new calls win the GIL over and over and the items waiting for it
            // after their sleep pile up, each holding a worker thread.
            std::thread::yield_now();
        }
        // SAFETY: the interpreter is initialized and, by the exit hook's contract (no work item
        // exists once it returned), not finalizing while a worker holds an item. The state is
        // released by `Drop` on this thread: `GilHold` never leaves `attach_worker`.
        let state = wq_core::ignore_sleeps(|| unsafe { ffi::PyGILState_Ensure() });
        if !HAS_THREAD_STATE.with(Cell::get) {
            HAS_THREAD_STATE.with(|c| c.set(true));
            // SAFETY: this thread holds the GIL (just ensured). One more `PyGILState_Ensure`,
            // never released, keeps the thread state's use count above zero so that releases
            // no longer delete it; being nested it takes nothing else. The interpreter frees
            // the thread state at finalization.
            let _ = unsafe { ffi::PyGILState_Ensure() };
        }
        Some(GilHold(state))
    }
}

impl Drop for GilHold {
    fn drop(&mut self) {
        // SAFETY: pairs with the `PyGILState_Ensure` in `take`, on the same thread, after every
        // nested attach made since was released (pyo3's guards are scoped inside).
        unsafe { ffi::PyGILState_Release(self.0) };
    }
}

/// Runs `f` attached to the interpreter on a worker thread; `None` when Python is gone (or
/// going) and `f` was not run.
pub(crate) fn attach_worker<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    wq_core::min_sleep(min_sleep(), || {
        let hold = GilHold::take()?;
        // Nested inside our hold: pyo3 only raises the use count, it does not wait.
        let result = Python::try_attach(f);
        drop(hold);
        result
    })
}
