//! Turning wq-core's refusals into the Python exceptions an `Executor` user expects.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::PyErr;

/// Maps a wq-core error to `ValueError` (a bad argument) or `RuntimeError` (a refusal of the
/// queue's current state), keeping wq-core's message.
pub(crate) fn to_py(err: wq_core::Error) -> PyErr {
    use wq_core::Error as E;
    match err {
        E::EmptyName
        | E::NameTooLong { .. }
        | E::NameHasNul { .. }
        | E::NameHasControl { .. }
        | E::UnknownFlags { .. }
        | E::MaxActiveTooLarge { .. }
        | E::ConflictingFlags(_)
        | E::InvalidCpu { .. }
        | E::NoCpus
        | E::InvalidConfig(_)
        | E::InvalidAttrs(_)
        | E::DelayTooLong { .. } => PyValueError::new_err(err.to_string()),
        E::Destroyed { .. } | E::Draining { .. } => {
            PyRuntimeError::new_err(format!("cannot schedule new futures: {err}"))
        }
        other => PyRuntimeError::new_err(other.to_string()),
    }
}
