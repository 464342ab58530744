//! Creating and completing `concurrent.futures.Future` objects with less interpreter overhead.
//!
//! Creating: `Future()` runs `Future.__init__`, whose `threading.Condition()` is most of the
//! cost of `submit` and leaves seven objects for the garbage collector to traverse. When a probe
//! at import finds `Future.__init__` setting exactly the six attributes CPython's
//! `concurrent/futures/_base.py` sets (3.9 through 3.14 do), a future is made with
//! `Future.__new__` and those six attributes, in the same order, with a [`FutureCondition`] as
//! `_condition`. It is a real `concurrent.futures.Future`: its class and every method are the
//! standard ones, so `wait`, `as_completed` and `asyncio.wrap_future` work unchanged. Otherwise
//! `Future()` is called.
//!
//! Completing: a worker starts each future with `set_running_or_notify_cancel` and completes it
//! with `set_result` / `set_exception`. Those are Python methods that enter
//! `with self._condition` and call `Condition.notify_all` even when nobody waits: for a tiny
//! callable that was most of the worker's time under the GIL. Here the same steps run from Rust,
//! in the same order and under the same lock: take `_condition`'s lock, check and move `_state`
//! exactly as the methods do, tell `_waiters` (`wait` / `as_completed`), notify the condition
//! only when it has waiters (otherwise notifying does nothing observable), release, and call
//! `_invoke_callbacks` only when callbacks are registered (otherwise it does nothing). A state
//! the fast path does not handle itself (a cancelled future, a finished one) goes to the real
//! method, which handles it as always. Futures whose layout the probe did not recognize always
//! go through their methods.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString};
use pyo3::{ffi, intern, Py};

use crate::cond::FutureCondition;

/// The attributes `Future.__init__` sets, in its order.
const FUTURE_ATTRS: [&str; 6] = ["_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks"];

/// What the fast paths need from `concurrent.futures`, looked up once.
struct FutureApi {
    /// `concurrent.futures.Future`.
    class: Py<PyAny>,
    /// `Future.__new__`.
    new: Py<PyAny>,
    /// The `_base.PENDING` / `RUNNING` / `FINISHED` state strings.
    pending: Py<PyString>,
    running: Py<PyString>,
    finished: Py<PyString>,
    /// Whether a fresh future has the layout the fast paths rely on.
    fast: bool,
}

static API: PyOnceLock<FutureApi> = PyOnceLock::new();

fn api(py: Python<'_>) -> PyResult<&FutureApi> {
    API.get_or_try_init(py, || {
        let base = py.import("concurrent.futures._base")?;
        let state =
            |name: &str| -> PyResult<Py<PyString>> { Ok(base.getattr(name)?.cast_into::<PyString>()?.unbind()) };
        let class = base.getattr("Future")?;
        let pending = state("PENDING")?;
        let fast = probe(&class.call0()?, &pending)?;
        Ok(FutureApi {
            new: class.getattr("__new__")?.unbind(),
            class: class.unbind(),
            pending,
            running: state("RUNNING")?,
            finished: state("FINISHED")?,
            fast,
        })
    })
}

/// True if `future` (fresh from `Future()`) has exactly the layout the fast paths rely on.
fn probe(future: &Bound<'_, PyAny>, pending: &Py<PyString>) -> PyResult<bool> {
    let vars = future.getattr("__dict__")?.cast_into::<PyDict>()?;
    let names: Vec<String> = vars.keys().iter().map(|k| k.extract()).collect::<PyResult<_>>()?;
    if names != FUTURE_ATTRS || !future.hasattr("_invoke_callbacks")? {
        return Ok(false);
    }
    let empty_list = |name: &str| -> PyResult<bool> {
        let value = future.getattr(name)?;
        Ok(value.is_instance_of::<PyList>() && value.is_empty()?)
    };
    Ok(future.getattr("_state")?.is(pending)
        && future.getattr("_result")?.is_none()
        && future.getattr("_exception")?.is_none()
        && empty_list("_waiters")?
        && empty_list("_done_callbacks")?)
}

/// Reads the constants and probes the future layout (called once, at import).
pub(crate) fn init(py: Python<'_>) -> PyResult<()> {
    api(py).map(|_| ())
}

/// A future cmwq made, and its `_condition` when that is a [`FutureCondition`]: the worker
/// then reaches the lock without looking the attribute up (a dict lookup and a type check on
/// memory that has usually gone cold by then). Nothing else replaces the private `_condition`
/// of a future; the methods of `Future` use the same object.
pub(crate) struct FutureHandle {
    pub(crate) future: Py<PyAny>,
    cond: Option<Py<FutureCondition>>,
}

impl FutureHandle {
    /// A new, pending `concurrent.futures.Future`.
    pub(crate) fn new(py: Python<'_>) -> PyResult<FutureHandle> {
        let api = api(py)?;
        let class = api.class.bind(py);
        if !api.fast {
            return Ok(FutureHandle { future: class.call0()?.unbind(), cond: None });
        }
        let (future, cond) = new_fast(py, api)?;
        Ok(FutureHandle { future: future.unbind(), cond: Some(cond.unbind()) })
    }

    fn cond<'py>(&self, future: &Bound<'py, PyAny>) -> PyResult<Cond<'py>> {
        match &self.cond {
            Some(native) => Ok(Cond::Native(native.bind(future.py()).clone())),
            None => Cond::of(future),
        }
    }
}

/// `Future()` without running `Future.__init__` (see the module docs); also returns the
/// condition it put in `_condition`.
fn new_fast<'py>(py: Python<'py>, api: &FutureApi) -> PyResult<(Bound<'py, PyAny>, Bound<'py, FutureCondition>)> {
    let class = api.class.bind(py);
    let future = api.new.bind(py).call1((class,))?;
    let cond = Bound::new(py, FutureCondition::new())?;
    // SAFETY: `cond` is a live object we hold a reference to. A `FutureCondition` holds no
    // Python references, so it can never be part of a reference cycle and the collector has
    // nothing to find through it; untracking only spares every collection a visit. (Its
    // deallocation untracks again, which is a no-op for an untracked object.)
    unsafe { ffi::PyObject_GC_UnTrack(cond.as_ptr().cast()) };
    future.setattr(intern!(py, "_condition"), &cond)?;
    future.setattr(intern!(py, "_state"), api.pending.bind(py))?;
    future.setattr(intern!(py, "_result"), py.None())?;
    future.setattr(intern!(py, "_exception"), py.None())?;
    future.setattr(intern!(py, "_waiters"), PyList::empty(py))?;
    future.setattr(intern!(py, "_done_callbacks"), PyList::empty(py))?;
    Ok((future, cond))
}

/// A future's `_condition`: ours, handled in Rust, or a `threading.Condition` (or anything
/// else with its interface), handled through its methods.
enum Cond<'py> {
    Native(Bound<'py, FutureCondition>),
    Python(Bound<'py, PyAny>),
}

impl<'py> Cond<'py> {
    fn of(future: &Bound<'py, PyAny>) -> PyResult<Cond<'py>> {
        let cond = future.getattr(intern!(future.py(), "_condition"))?;
        Ok(match cond.cast_into::<FutureCondition>() {
            Ok(native) => Cond::Native(native),
            Err(err) => Cond::Python(err.into_inner()),
        })
    }

    /// Runs `f` holding the lock (as `with cond:` does), releasing it whatever `f` returns.
    fn with_lock<R>(&self, f: impl FnOnce() -> PyResult<R>) -> PyResult<R> {
        match self {
            Cond::Native(c) => {
                c.get().lock(c.py(), None)?;
                let result = f();
                c.get().unlock()?;
                result
            }
            Cond::Python(c) => {
                let py = c.py();
                c.call_method0(intern!(py, "acquire"))?;
                let result = f();
                let released = c.call_method0(intern!(py, "release"));
                let value = result?;
                released?;
                Ok(value)
            }
        }
    }

    /// `notify_all()`, skipped when nobody waits (only the lock's owner calls this).
    fn notify_all(&self) -> PyResult<()> {
        match self {
            Cond::Native(c) => {
                if c.get().has_waiters() {
                    c.get().notify_n(usize::MAX)?;
                }
            }
            Cond::Python(c) => {
                let py = c.py();
                let idle = match c.getattr(intern!(py, "_waiters")) {
                    Ok(waiters) => waiters.is_empty().unwrap_or(false),
                    Err(_) => false,
                };
                if !idle {
                    c.call_method0(intern!(py, "notify_all"))?;
                }
            }
        }
        Ok(())
    }
}

/// `future.set_running_or_notify_cancel()`: true if the call should run, false if the future
/// was cancelled (its waiters are then told, as the method does).
pub(crate) fn start(py: Python<'_>, handle: &FutureHandle) -> PyResult<bool> {
    let future = handle.future.bind(py);
    let api = api(py)?;
    if api.fast {
        let cond = handle.cond(future)?;
        let started = cond.with_lock(|| {
            if future.getattr(intern!(py, "_state"))?.is(&api.pending) {
                future.setattr(intern!(py, "_state"), api.running.bind(py))?;
                Ok(true)
            } else {
                Ok(false)
            }
        })?;
        if started {
            return Ok(true);
        }
    }
    // Cancelled (or in a state only the method knows how to report).
    future.call_method0(intern!(py, "set_running_or_notify_cancel"))?.is_truthy()
}

/// How a call ended.
pub(crate) enum Outcome<'py> {
    Returned(Bound<'py, PyAny>),
    Raised(Bound<'py, PyAny>),
}

/// `future.set_result(value)` or `future.set_exception(exc)`.
pub(crate) fn complete<'py>(py: Python<'py>, handle: &FutureHandle, outcome: Outcome<'py>) -> PyResult<()> {
    let future = handle.future.bind(py);
    let api = api(py)?;
    if api.fast {
        let cond = handle.cond(future)?;
        let done = cond.with_lock(|| {
            let state = future.getattr(intern!(py, "_state"))?;
            if !(state.is(&api.running) || state.is(&api.pending)) {
                // Cancelled or finished: the method raises InvalidStateError.
                return Ok(false);
            }
            let tell = match &outcome {
                Outcome::Returned(value) => {
                    future.setattr(intern!(py, "_result"), value)?;
                    intern!(py, "add_result")
                }
                Outcome::Raised(exc) => {
                    future.setattr(intern!(py, "_exception"), exc)?;
                    intern!(py, "add_exception")
                }
            };
            future.setattr(intern!(py, "_state"), api.finished.bind(py))?;
            let waiters = future.getattr(intern!(py, "_waiters"))?;
            if !waiters.is_empty()? {
                for waiter in waiters.try_iter()? {
                    waiter?.call_method1(tell, (future,))?;
                }
            }
            cond.notify_all()?;
            Ok(true)
        })?;
        if done {
            if !future.getattr(intern!(py, "_done_callbacks"))?.is_empty()? {
                future.call_method0(intern!(py, "_invoke_callbacks"))?;
            }
            return Ok(());
        }
    }
    match outcome {
        Outcome::Returned(value) => future.call_method1(intern!(py, "set_result"), (value,))?,
        Outcome::Raised(exc) => future.call_method1(intern!(py, "set_exception"), (exc,))?,
    };
    Ok(())
}
