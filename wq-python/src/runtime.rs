//! `cmwq.Runtime`: the global runtime, or an isolated one with its own CPUs and settings
//! (for tests and embedding: a one-CPU runtime makes cmwq's scheduling visible).

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::to_py;

/// Converts a non-negative, finite number of seconds.
fn seconds(what: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!("{what} must be a finite, non-negative number of seconds, got {value}"))
    })
}

/// Parses a detector name.
fn detector(name: &str) -> PyResult<wq_core::Detector> {
    match name {
        "auto" => Ok(wq_core::Detector::Auto),
        "perf" => Ok(wq_core::Detector::Perf),
        "procfs" => Ok(wq_core::Detector::Procfs),
        "explicit" => Ok(wq_core::Detector::ExplicitOnly),
        other => Err(PyValueError::new_err(format!(
            "unknown detector {other:?}: expected 'auto', 'perf', 'procfs' or 'explicit'"
        ))),
    }
}

/// A cmwq runtime: per-CPU worker pools, unbound pools, and the thread that manages them.
#[pyclass(module = "cmwq._cmwq", name = "Runtime", frozen)]
pub(crate) struct PyRuntime {
    rt: wq_core::Runtime,
}

impl PyRuntime {
    /// Wraps an existing runtime handle.
    pub(crate) fn from_core(rt: wq_core::Runtime) -> PyRuntime {
        PyRuntime { rt }
    }

    /// The wrapped runtime.
    pub(crate) fn runtime(&self) -> &wq_core::Runtime {
        &self.rt
    }
}

#[pymethods]
impl PyRuntime {
    /// Builds an isolated runtime. `cpus` lists the CPUs whose pools it runs (default: every CPU
    /// the process may use); durations are in seconds; `detector` is one of "auto", "perf",
    /// "procfs", "explicit".
    #[new]
    #[pyo3(signature = (cpus = None, *, idle_timeout = None, cpu_hog_threshold = None,
                        max_workers = None, detector = None))]
    fn new(
        py: Python<'_>,
        cpus: Option<&Bound<'_, PyAny>>,
        idle_timeout: Option<f64>,
        cpu_hog_threshold: Option<f64>,
        max_workers: Option<i64>,
        detector: Option<&str>,
    ) -> PyResult<PyRuntime> {
        let mut builder = wq_core::Runtime::builder();
        if let Some(cpus) = cpus {
            builder = builder.cpus(cpu_list(cpus)?);
        }
        if let Some(t) = idle_timeout {
            builder = builder.idle_timeout(seconds("idle_timeout", t)?);
        }
        if let Some(t) = cpu_hog_threshold {
            builder = builder.cpu_hog_threshold(seconds("cpu_hog_threshold", t)?);
        }
        if let Some(n) = max_workers {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| PyValueError::new_err(format!("max_workers must be >= 1, got {n}")))?;
            builder = builder.max_workers(n);
        }
        if let Some(name) = detector {
            builder = builder.detector(self::detector(name)?);
        }
        let rt = py.detach(move || builder.build()).map_err(to_py)?;
        Ok(PyRuntime { rt })
    }

    /// The process-wide runtime behind the system queues and `Workqueue(...)` without `runtime=`.
    #[staticmethod]
    fn global_runtime(py: Python<'_>) -> PyRuntime {
        PyRuntime { rt: py.detach(|| wq_core::Runtime::global().clone()) }
    }

    /// The CPUs this runtime manages.
    #[getter]
    fn cpus(&self) -> Vec<usize> {
        self.rt.cpus().to_vec()
    }

    /// How many times the runtime's monitor thread panicked and started over (0 unless a
    /// `tracing` subscriber, a spawn hook or a bug panicked on it; anything else deserves a look).
    #[getter]
    fn monitor_panics(&self) -> u64 {
        self.rt.stats().monitor_panics
    }

    /// The `wq_dump.py`-style description of pools, workers and queues.
    fn dump(&self, py: Python<'_>) -> String {
        let rt = self.rt.clone();
        py.detach(move || rt.dump())
    }

    /// Per-pool counters: a list of dicts.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // Read with the GIL held, like `Workqueue.stats`: it takes only wq-core's leaf locks,
        // which no thread holds while it waits for the GIL. Releasing the GIL for these few
        // microseconds starved the workers of a loop that polls stats: each release wakes the
        // GIL's waiters and restarts their 5 ms wait before they may ask for a switch, and the
        // polling thread takes the GIL back first (1,000 calls of 0.5 ms took up to 70 s).
        let stats = self.rt.stats();
        let pools = PyList::empty(py);
        for p in &stats.pools {
            let d = PyDict::new(py);
            d.set_item("id", p.id)?;
            d.set_item("cpu", p.cpu)?;
            d.set_item("highpri", p.highpri)?;
            d.set_item("nice", p.nice)?;
            d.set_item("nice_granted", p.nice_granted)?;
            d.set_item("workers", p.workers)?;
            d.set_item("idle", p.idle)?;
            d.set_item("running", p.running)?;
            d.set_item("pending", p.pending)?;
            d.set_item("stalls", p.stalls)?;
            pools.append(d)?;
        }
        Ok(pools)
    }

    /// The sleep detector in use ("perf", "procfs" or "explicit-only") and why it was chosen.
    #[getter]
    fn detector(&self) -> (String, String) {
        let (kind, why) = self.rt.detector();
        (kind.to_string(), why.to_owned())
    }

    fn __repr__(&self) -> String {
        format!("<cmwq.Runtime cpus={:?} detector={}>", self.rt.cpus(), self.rt.detector().0)
    }
}

/// The global runtime's dump text.
#[pyfunction]
pub(crate) fn dump(py: Python<'_>) -> String {
    py.detach(|| wq_core::Runtime::global().dump())
}

/// Reads `cpus=`: an iterable of CPU numbers, read one at a time so that an
/// endless or huge one (`range(10**12)`) is refused rather than allocated.
fn cpu_list(cpus: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    // No machine has more CPUs than wq-core accepts (CPU numbers below 2^16).
    const MOST: usize = 1 << 16;
    let not_ints = || PyTypeError::new_err("cpus must be an iterable of ints");
    let mut list = Vec::new();
    for item in cpus.try_iter().map_err(|_| not_ints())? {
        let item = item?;
        if list.len() == MOST {
            return Err(PyValueError::new_err(format!("cpus lists more than {MOST} CPUs")));
        }
        if !item.is_instance_of::<pyo3::types::PyInt>() {
            return Err(not_ints());
        }
        let cpu = item
            .extract::<usize>()
            .map_err(|_| PyValueError::new_err(format!("CPU numbers are from 0 to {}, got {item}", MOST - 1)))?;
        list.push(cpu);
    }
    Ok(list)
}
