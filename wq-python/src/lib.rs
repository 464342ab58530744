//! `wq-python`: the native extension module `cmwq._cmwq` behind the Python package `cmwq`.
//!
//! It puts Python callables on wq-core workqueues: the Linux kernel's Concurrency Managed
//! Workqueue in userspace. The Python package wraps it as `cmwq.Workqueue`, a
//! `concurrent.futures.Executor` that also serves asyncio. Build and install it with
//! `pip install ./wq-python` (maturin is the PEP 517 backend); then, in Python:
//!
//! ```python
//! import cmwq
//!
//! with cmwq.Workqueue("demo", flags=cmwq.HIGHPRI) as wq:
//!     assert wq.submit(pow, 2, 10).result() == 1024
//! ```
//!
//! Rules this crate keeps: Rust never waits while attached to the interpreter (every wait runs
//! in `Python::detach` and wakes every 50 ms to run signal handlers); workers attach only to
//! call Python, with `Python::try_attach` behind the exit hook's gate; exceptions reach the
//! future with their traceback; bad input raises `TypeError`/`ValueError`/`RuntimeError`.

mod cond;
mod errors;
mod future;
mod gil;
mod queue;
mod runtime;
mod tracker;

use pyo3::prelude::*;

/// Native core of the `cmwq` package (use `cmwq`, not this module).
#[pymodule]
mod _cmwq {
    use pyo3::prelude::*;
    use wq_core::Flags;

    #[pymodule_export]
    use crate::cond::FutureCondition;
    #[pymodule_export]
    use crate::queue::{_after_fork_in_child, _python_exit, blocking, is_worker_thread, NativeQueue};
    #[pymodule_export]
    use crate::runtime::{dump, PyRuntime};

    /// Adds the flag constants and limits.
    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        crate::gil::read_switch_interval(m.py())?;
        crate::future::init(m.py())?;
        m.add("HIGHPRI", Flags::HIGHPRI.bits())?;
        m.add("CPU_INTENSIVE", Flags::CPU_INTENSIVE.bits())?;
        m.add("UNBOUND", Flags::UNBOUND.bits())?;
        m.add("FREEZABLE", Flags::FREEZABLE.bits())?;
        m.add("MEM_RECLAIM", Flags::MEM_RECLAIM.bits())?;
        m.add("POWER_EFFICIENT", Flags::POWER_EFFICIENT.bits())?;
        m.add("MAX_ACTIVE_LIMIT", wq_core::MAX_ACTIVE_LIMIT)?;
        m.add("SIGNAL_CHECK_INTERVAL", crate::tracker::SIGNAL_CHECK.as_secs_f64())?;
        Ok(())
    }
}
