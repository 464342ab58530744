//! The native half of `cmwq.Workqueue`: submitting Python callables as wq-core work items.
//!
//! The Python class creates each `concurrent.futures.Future` and hands `(fn, args, kwargs,
//! future)` here; a wq worker claims the item in Rust (no GIL needed, so
//! `shutdown(cancel_futures=True)` sees prompt pickup), then takes the GIL just long enough to
//! run it and complete the future with `set_result` / `set_exception`.

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt, PyTuple};
use wq_core::Flags;

use crate::errors::to_py;
use crate::gil::attach_worker;
use crate::runtime::PyRuntime;
use crate::tracker::{Entry, RunningGuard, Tracker};

/// The Python side of one item: what to call.
struct Call {
    func: Py<PyAny>,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
}

/// One Python call waiting in (or running on) a workqueue.
struct Job {
    /// Taken when the job runs; still here on drop means wq-core dropped it unrun.
    item: Option<(Call, Arc<Entry>)>,
    seq: u64,
    tracker: Arc<Tracker>,
}

impl Job {
    /// Runs on a wq worker thread, not attached to Python.
    fn run(mut self) {
        let Some((call, entry)) = self.item.take() else { return };
        if !entry.claim() {
            // Cancelled by shutdown(cancel_futures=True), which already completed the future and
            // unregistered the item; the Python references are released at the next attach.
            return;
        }
        let (tracker, seq) = (&self.tracker, self.seq);
        let ran = attach_worker(|py| {
            {
                let _running = RunningGuard::enter(tracker, seq);
                call_into_future(py, &call, entry.future());
            }
            // Release the callable, its arguments and the future while attached.
            drop((call, entry));
            tracker.finish(seq);
        });
        if ran.is_none() {
            // The interpreter is finalizing: the item cannot run, but waiters must not hang.
            tracker.finish(seq);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        let Some((call, entry)) = self.item.take() else { return };
        // wq-core dropped the item without running it (it refused it, or its runtime went
        // away): fail the future instead of leaving it pending forever.
        attach_worker(|py| {
            if entry.claim() {
                let err = PyRuntimeError::new_err("the workqueue dropped this work item unrun");
                // The future may have been cancelled meanwhile; then there is nothing to report.
                let _ = entry.future().bind(py).call_method1(intern!(py, "set_exception"), (err.into_value(py),));
            }
            drop((call, entry));
        });
        self.tracker.finish(self.seq);
    }
}

/// Runs `func(*args, **kwargs)` for `future` with `concurrent.futures` semantics: skipped if the
/// future was cancelled, result or exception (with its traceback) stored in it.
fn call_into_future(py: Python<'_>, call: &Call, future: &Py<PyAny>) {
    let future = future.bind(py);
    match future.call_method0(intern!(py, "set_running_or_notify_cancel")).and_then(|started| started.is_truthy()) {
        Ok(true) => {}
        Ok(false) => return,
        Err(err) => {
            // Only a future mishandled by its owner gets here; report it like an exception in a
            // callback would be.
            err.write_unraisable(py, Some(future.as_any()));
            return;
        }
    }
    let outcome = match call.func.bind(py).call(call.args.bind(py), call.kwargs.as_ref().map(|k| k.bind(py))) {
        Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
        Err(err) => future.call_method1(intern!(py, "set_exception"), (err.into_value(py),)),
    };
    if let Err(err) = outcome {
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
}

impl NativeQueue {
    fn wrap(wq: wq_core::Workqueue, system: bool) -> NativeQueue {
        NativeQueue { wq, tracker: Tracker::new(), system }
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
        let name: String = name
            .extract()
            .map_err(|_| PyTypeError::new_err(format!("workqueue name must be str, not {}", type_name(name))))?;
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

    /// Queues `func(*args, **kwargs)`; `future` receives the outcome.
    #[pyo3(signature = (func, args, kwargs, future))]
    fn submit(
        &self,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        future: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if !func.is_callable() {
            return Err(PyTypeError::new_err(format!("submit() needs a callable, got a {} object", type_name(func))));
        }
        let (seq, entry) = self.tracker.register(future.clone().unbind())?;
        let call = Call {
            func: func.clone().unbind(),
            args: args.clone().unbind(),
            kwargs: kwargs.filter(|k| !k.is_empty()).map(|k| k.clone().unbind()),
        };
        let job = Job { item: Some((call, entry)), seq, tracker: Arc::clone(&self.tracker) };
        // Queueing never waits: wq-core only links the item into a worklist and may wake a worker.
        match self.wq.execute(move || job.run()) {
            Ok(()) => Ok(()),
            Err(err) => {
                self.tracker.finish(seq);
                Err(to_py(err))
            }
        }
    }

    /// Refuses new work (not for system queues, which stay usable), cancels unstarted items if
    /// asked, and waits for the rest if asked.
    #[pyo3(signature = (wait = true, cancel_futures = false))]
    fn shutdown(&self, py: Python<'_>, wait: bool, cancel_futures: bool) -> PyResult<()> {
        if !self.system {
            self.tracker.close();
        }
        if cancel_futures {
            for entry in self.tracker.cancel_queued() {
                entry.future().bind(py).call_method0(intern!(py, "cancel"))?;
            }
        }
        if wait {
            self.tracker.wait_idle(py, "shutdown(wait=True)")?;
            if !self.system {
                let wq = self.wq.clone();
                py.detach(move || wq.destroy()).map_err(to_py)?;
            }
        }
        Ok(())
    }

    /// Waits for every item submitted before the call.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        // Our own wait checks signals; once it is over, the items' Python work is done.
        self.tracker.flush(py)?;
        if !self.system {
            // Only our items are on this queue and they have finished: this waits just for
            // wq-core's bookkeeping after them, so `stats()` right after `flush()` counts them.
            // (On shared system queues it could wait for unrelated Rust work: skipped.)
            let wq = self.wq.clone();
            py.detach(move || wq_core::blocking(|| wq.flush())).map_err(to_py)?;
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
