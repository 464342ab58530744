//! The native half of `cmwq.Workqueue`: submitting Python callables as wq-core work items.
//!
//! `submit` creates the `concurrent.futures.Future` (or takes one made ahead of time, see
//! `NativeQueue::submit`), queues the call in the queue's [`Tracker`] and puts one token per
//! call on the wq-core workqueue. A wq worker runs a token in Rust (no GIL needed, so
//! `shutdown(cancel_futures=True)` sees prompt pickup): it takes the oldest queued call, attaches
//! to the interpreter, runs the call and completes its future. If more calls are queued it runs
//! those too before detaching, for up to a fifth of the switch interval, as a
//! `ThreadPoolExecutor` thread keeps the GIL while its queue has work: attaching once per call
//! made the GIL hand-offs the largest per-item cost. (A whole switch interval starved the other
//! GIL waiters past the detector's futex threshold, so they counted as asleep and the pool
//! grew.) The tokens of calls run that way find the queue empty and return at once.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyString, PyTuple};
use wq_core::Flags;

use crate::errors::to_py;
use crate::future::{self, FutureHandle, Outcome};
use crate::gil::{attach_worker, switch_interval, CallSection};
use crate::runtime::PyRuntime;
use crate::tracker::{python_abandoned, Item, RunningGuard, Tracker};

/// How long `flush` waits for wq-core to account for the tokens of the items it waited for: a
/// bound, not a timing (it takes microseconds); past it, `stats()` may lag by those tokens.
const ACCOUNTING_WAIT: Duration = Duration::from_secs(1);

/// wq-core's handle on one submitted call: whichever token runs takes the oldest queued call.
struct Token {
    tracker: Arc<Tracker>,
    /// False until the token runs; a token dropped unrun fails one call instead.
    ran: bool,
}

impl Token {
    /// Runs on a wq worker thread, not attached to Python.
    fn run(mut self) {
        self.ran = true;
        let tracker = &self.tracker;
        // Taking the call happens here, before waiting for the GIL: `cancel_futures` then finds
        // only calls no worker has picked up.
        let Some(first) = tracker.take() else { return };
        let first_seq = first.seq;
        let ran = attach_worker(move |py| {
            // Well inside the time CPython lets a thread keep the GIL before handing it over.
            let deadline = Instant::now() + switch_interval() / 5;
            let mut item = first;
            loop {
                {
                    let _running = RunningGuard::enter(tracker, item.seq);
                    run_item(py, &item);
                }
                let seq = item.seq;
                // Release the callable, its arguments and the future while attached.
                drop(item);
                // Once the exit hook gave up on the workers, take no further call.
                let more = Instant::now() < deadline && !python_abandoned();
                match tracker.finish(seq, more) {
                    Some(next) => item = next,
                    None => break,
                }
            }
        });
        if ran.is_none() {
            // The interpreter is finalizing: the call cannot run, but waiters must not hang.
            tracker.finish(first_seq, false);
        }
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if self.ran {
            return;
        }
        // wq-core dropped the token without running it (it refused it, or its runtime went
        // away): fail one queued call instead of leaving it pending forever with no token left
        // to run it.
        let Some(item) = self.tracker.take() else { return };
        let seq = item.seq;
        attach_worker(move |py| {
            let err = PyRuntimeError::new_err("the workqueue dropped this work item unrun");
            // The future may have been cancelled meanwhile; then there is nothing to report.
            if future::start(py, &item.future).unwrap_or(false) {
                let _ =
                    future::complete(py, &item.future, Outcome::Raised(err.into_value(py).into_bound(py).into_any()));
            }
            drop(item);
        });
        self.tracker.finish(seq, false);
    }
}

/// Runs `func(*args, **kwargs)` for its future with `concurrent.futures` semantics: skipped if
/// the future was cancelled, result or exception (with its traceback) stored in it.
fn run_item(py: Python<'_>, item: &Item) {
    let _in_call = CallSection::enter();
    let future = item.future.future.bind(py);
    match future::start(py, &item.future) {
        Ok(true) => {}
        Ok(false) => return,
        Err(err) => {
            // Only a future mishandled by its owner gets here; report it like an exception in a
            // callback would be.
            err.write_unraisable(py, Some(future.as_any()));
            return;
        }
    }
    let outcome = match item.func.bind(py).call(item.args.bind(py), item.kwargs.as_ref().map(|k| k.bind(py))) {
        Ok(value) => Outcome::Returned(value),
        Err(err) => Outcome::Raised(err.into_value(py).into_bound(py).into_any()),
    };
    if let Err(err) = future::complete(py, &item.future, outcome) {
        err.write_unraisable(py, Some(future.as_any()));
    }
}

/// Reads an int argument; `None` if it does not fit in an i64 (the caller's range check then
/// refuses it with `ValueError`, like any other out-of-range value).
fn int_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Option<i64>> {
    if !value.is_instance_of::<PyInt>() {
        return Err(PyTypeError::new_err(format!("{what} must be an int, not {}", type_name(value))));
    }
    Ok(value.extract::<i64>().ok())
}

/// The name of `value`'s type, for error messages.
fn type_name(value: &Bound<'_, PyAny>) -> String {
    value.get_type().name().map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

/// Parses the `flags` argument, refusing bits that are not workqueue flags.
fn parse_flags(value: &Bound<'_, PyAny>) -> PyResult<Flags> {
    let bits = int_arg(value, "flags")?
        .and_then(|f| u32::try_from(f).ok())
        .ok_or_else(|| PyValueError::new_err(format!("flags {value} are not workqueue flags")))?;
    Flags::from_bits(bits).ok_or_else(|| {
        let unknown = bits & !Flags::all().bits();
        PyValueError::new_err(format!("unknown workqueue flag bits {unknown:#x} in flags {bits:#x}"))
    })
}

/// The native workqueue behind `cmwq.Workqueue`.
#[pyclass(module = "cmwq._cmwq", name = "_Queue", frozen)]
pub(crate) struct NativeQueue {
    wq: wq_core::Workqueue,
    tracker: Arc<Tracker>,
    system: bool,
    /// A pending future made after the last lone submit handed its CPU over, for the next
    /// submit to use (see `submit`).
    spare: Mutex<Option<FutureHandle>>,
}

impl NativeQueue {
    fn wrap(wq: wq_core::Workqueue, system: bool) -> NativeQueue {
        NativeQueue { wq, tracker: Tracker::new(), system, spare: Mutex::new(None) }
    }

    /// The spare future's slot. Only plain moves happen under this lock.
    fn spare(&self) -> std::sync::MutexGuard<'_, Option<FutureHandle>> {
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl NativeQueue {
    /// Creates a workqueue on `runtime` (the global runtime when `None`).
    #[new]
    #[pyo3(signature = (name, flags, max_active, ordered, runtime = None))]
    fn new(
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        flags: &Bound<'_, PyAny>,
        max_active: &Bound<'_, PyAny>,
        ordered: bool,
        runtime: Option<PyRef<'_, PyRuntime>>,
    ) -> PyResult<NativeQueue> {
        if !name.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(format!("workqueue name must be str, not {}", type_name(name))));
        }
        // A str that is not valid UTF-8 (a lone surrogate) keeps Python's own UnicodeEncodeError.
        let name: String = name.extract()?;
        let flags = parse_flags(flags)?;
        let max_active = int_arg(max_active, "max_active")?
            .and_then(|m| u32::try_from(m).ok())
            .filter(|&m| m <= wq_core::MAX_ACTIVE_LIMIT)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "max_active must be between 0 and {}, got {max_active}",
                    wq_core::MAX_ACTIVE_LIMIT
                ))
            })?;
        let rt = match &runtime {
            Some(r) => r.runtime().clone(),
            None => py.detach(|| wq_core::Runtime::global().clone()),
        };
        let mut builder = rt.workqueue(&name).flags(flags).max_active(max_active);
        if ordered {
            builder = builder.ordered();
        }
        let wq = py.detach(move || builder.build()).map_err(to_py)?;
        Ok(NativeQueue::wrap(wq, false))
    }

    /// One of the process-wide system queues, by name.
    #[staticmethod]
    fn system(py: Python<'_>, name: &str) -> PyResult<NativeQueue> {
        let wq = py.detach(|| match name {
            "system_wq" => Some(wq_core::system_wq().clone()),
            "system_highpri_wq" => Some(wq_core::system_highpri_wq().clone()),
            "system_long_wq" => Some(wq_core::system_long_wq().clone()),
            "system_unbound_wq" => Some(wq_core::system_unbound_wq().clone()),
            "system_freezable_wq" => Some(wq_core::system_freezable_wq().clone()),
            "system_power_efficient_wq" => Some(wq_core::system_power_efficient_wq().clone()),
            _ => None,
        });
        wq.map(|wq| NativeQueue::wrap(wq, true))
            .ok_or_else(|| PyValueError::new_err(format!("no system workqueue named {name:?}")))
    }

    /// Queues `func(*args, **kwargs)` and returns the `concurrent.futures.Future` that receives
    /// its outcome.
    #[pyo3(signature = (func, /, *args, **kwargs))]
    fn submit<'py>(
        &self,
        func: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !func.is_callable() {
            return Err(PyTypeError::new_err(format!("submit() needs a callable, got a {} object", type_name(func))));
        }
        // Before anything is queued: a refusal of the token below fails the future instead,
        // with a message that does not say why.
        if self.wq.runtime().is_forked() {
            return Err(to_py(wq_core::Error::Forked));
        }
        let py = func.py();
        // Making a future was the largest step of `submit` before the worker is woken (0.8 to
        // 1.5 µs measured: after an idle period its code and data are out of the caches). Taking
        // one made earlier (a fresh, pending future nobody else has seen) cut the submit-to-start
        // p50 of an idle queue by about a quarter (bench_executors.py --scenarios latency).
        let spare = self.spare().take();
        let handle = match spare {
            Some(spare) => spare,
            None => FutureHandle::new(py)?,
        };
        let future = handle.future.clone_ref(py).into_bound(py);
        let (seq, lone) = self.tracker.push(|seq| Item {
            seq,
            func: func.clone().unbind(),
            args: args.clone().unbind(),
            kwargs: kwargs.filter(|k| !k.is_empty()).map(|k| k.clone().unbind()),
            future: handle,
        })?;
        let token = Token { tracker: Arc::clone(&self.tracker), ran: false };
        // Queueing never waits: wq-core only links the item into a worklist and may wake a worker.
        // A lone item (an idle queue, not part of a burst) wakes one, which on a bound queue is
        // pinned to this CPU: release the GIL meanwhile and yield the CPU once, so that the
        // worker starts the call at once (that hand-over was half the submit-to-start latency)
        // instead of after this thread blocks in `result()`. In a burst the GIL stays with the
        // submitter: handing it over for every item would make each submit a context switch.
        let wq = &self.wq;
        let queued = if lone {
            py.detach(move || {
                let queued = wq.execute(move || token.run());
                std::thread::yield_now();
                queued
            })
        } else {
            wq.execute(move || token.run())
        };
        if lone && queued.is_ok() {
            // The worker is awake and has usually run the call during the yield: making the next
            // lone submit's future now no longer delays this call's start. Bursts do not refill
            // it, so a burst costs no more than before. A failure here (out of memory) only
            // means the next submit makes its own.
            if let Ok(next) = FutureHandle::new(py) {
                let old = self.spare().replace(next);
                // Dropped outside the lock: a future's release may run arbitrary finalizers.
                drop(old);
            }
        }
        match queued {
            Ok(()) => Ok(future),
            Err(err) => match self.tracker.unqueue(seq) {
                Some(item) => {
                    drop(item);
                    Err(to_py(err))
                }
                // A worker already took the call (the refused token's drop or another token's
                // batch): the future reports what became of it.
                None => Ok(future),
            },
        }
    }

    /// Refuses new work (not for system queues, which stay usable), cancels unstarted items if
    /// asked, and waits for the rest if asked.
    #[pyo3(signature = (wait = true, cancel_futures = false))]
    fn shutdown(&self, py: Python<'_>, wait: bool, cancel_futures: bool) -> PyResult<()> {
        // In a child made by `fork`, the items in flight are the parent's workers' and never
        // end here: `ThreadPoolExecutor.shutdown` there returns at once too.
        let wait = wait && !self.wq.runtime().is_forked();
        if !self.system {
            self.tracker.close();
            // A closed queue makes no more futures: release the spare (outside the lock).
            let spare = self.spare().take();
            drop(spare);
        }
        if cancel_futures {
            // Every drained item's future is cancelled, even when a done-callback raises (a
            // `BaseException` gets through `Future.cancel`): stopping at it would lose the rest,
            // neither run nor cancelled. The first error is raised once all are.
            let mut first_err = None;
            for item in self.tracker.cancel_queued() {
                if let Err(err) = item.future.future.bind(py).call_method0(intern!(py, "cancel")) {
                    first_err.get_or_insert(err);
                }
            }
            if let Some(err) = first_err {
                return Err(err);
            }
        }
        if !wait {
            return Ok(());
        }
        if self.system {
            // A system queue keeps taking work from everyone: what this call waits for is what
            // was submitted through this object before it, as `flush` does (waiting until
            // nothing is in flight might never end).
            return self.tracker.flush(py);
        }
        self.tracker.wait_idle(py, "shutdown(wait=True)")?;
        let wq = self.wq.clone();
        py.detach(move || wq.destroy()).map_err(to_py)
    }

    /// Waits for every item submitted before the call.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        if self.wq.runtime().is_forked() {
            // The parent's items in flight never end in this child.
            return Err(to_py(wq_core::Error::Forked));
        }
        // Our own wait checks signals; once it is over, the items' Python work is done.
        self.tracker.flush(py)?;
        if !self.system {
            // wq-core accounts for their tokens microseconds later; `stats()` right after
            // `flush()` should count them. wq-core's own flush would also wait for tokens
            // queued since the call (and hang on a later item that waits for this thread), so
            // wait only until no token is in flight beyond one per item still pending: the
            // rest are tokens of finished items, or tokens that found no item to run, about to
            // be accounted for. (On shared system queues other work counts too: skipped.)
            let (wq, tracker) = (self.wq.clone(), Arc::clone(&self.tracker));
            py.detach(move || {
                let deadline = Instant::now() + ACCOUNTING_WAIT;
                while wq.stats().in_flight > tracker.pending() as u64 && Instant::now() < deadline {
                    thread::sleep(Duration::from_micros(200));
                }
            });
        }
        Ok(())
    }

    /// The queue's counters, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.wq.stats();
        let d = PyDict::new(py);
        d.set_item("name", self.wq.name())?;
        d.set_item("total", s.total)?;
        d.set_item("in_flight", s.in_flight)?;
        d.set_item("cpu_time", s.cpu_time.as_secs_f64())?;
        d.set_item("cpu_hogs", s.cpu_hogs)?;
        d.set_item("cm_wakeups", s.cm_wakeups)?;
        d.set_item("mayday", s.mayday)?;
        d.set_item("rescued", s.rescued)?;
        d.set_item("panics", s.panics)?;
        d.set_item("refused", s.refused)?;
        d.set_item("pending", self.tracker.pending())?;
        Ok(d)
    }

    /// The queue's name.
    #[getter]
    fn name(&self) -> &str {
        self.wq.name()
    }

    /// The queue's flags, as an int of `cmwq` flag bits.
    #[getter]
    fn flags(&self) -> u32 {
        self.wq.flags().bits()
    }

    /// The effective concurrency limit (0 was turned into the default).
    #[getter]
    fn max_active(&self) -> u32 {
        self.wq.max_active()
    }

    /// True for the process-wide system queues.
    #[getter]
    fn is_system(&self) -> bool {
        self.system
    }

    /// True once `shutdown` ran on a non-system queue.
    #[getter]
    fn is_shutdown(&self) -> bool {
        self.tracker.is_closed()
    }

    /// The runtime the queue runs on.
    #[getter]
    fn runtime(&self) -> PyRuntime {
        PyRuntime::from_core(self.wq.runtime().clone())
    }

    fn __repr__(&self) -> String {
        format!(
            "<cmwq workqueue {:?} flags={:#x} max_active={}>",
            self.wq.name(),
            self.wq.flags().bits(),
            self.wq.max_active()
        )
    }
}

/// Runs `func(*args, **kwargs)` marked as a blocking section: on a wq worker, the pool may start
/// another worker meanwhile (kernel cmwq's "the worker slept"); elsewhere it is a plain call.
/// `func` should release the GIL while it blocks (as `time.sleep` and socket I/O do).
#[pyfunction]
#[pyo3(signature = (func, /, *args, **kwargs))]
pub(crate) fn blocking<'py>(
    func: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    if !func.is_callable() {
        return Err(PyTypeError::new_err("blocking() needs a callable"));
    }
    wq_core::blocking(|| func.call(args, kwargs))
}

/// True on a wq worker thread.
#[pyfunction]
pub(crate) fn is_worker_thread() -> bool {
    wq_core::is_worker_thread()
}

/// The interpreter-exit hook; see [`crate::tracker::exit_hook`].
#[pyfunction]
pub(crate) fn _python_exit(py: Python<'_>) -> PyResult<()> {
    crate::tracker::exit_hook(py)
}

/// The `os.register_at_fork(after_in_child=...)` hook; see [`crate::tracker::after_fork_in_child`].
#[pyfunction]
pub(crate) fn _after_fork_in_child() {
    crate::tracker::after_fork_in_child()
}
