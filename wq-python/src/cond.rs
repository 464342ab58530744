//! `_FutureCondition`: the `_condition` of the futures cmwq creates.
//!
//! A `concurrent.futures.Future` built by `Future()` carries a `threading.Condition` over an
//! `RLock`. Building that condition runs its Python `__init__` and leaves seven objects the
//! cyclic garbage collector tracks (the condition, five bound methods, a deque), which every
//! collection then traverses: for a program holding many futures (a `wait` on 100,000 of them)
//! that traversal cost more than the rest of `submit`. This type offers the same interface the
//! `concurrent.futures` code uses (`with`, `acquire`, `release`, `wait`, `wait_for`, `notify`,
//! `notify_all`) and the same semantics: a re-entrant lock owned by a thread, waits that give
//! up the lock (at every recursion level) and take it back before returning even when
//! interrupted, waiters woken in FIFO order. It is one object, and it holds no Python
//! references, so it is not tracked by the collector.
//!
//! Blocking never holds the GIL, and blocking waits wake every [`SIGNAL_CHECK`] to run signal
//! handlers, so Ctrl-C interrupts `future.result()` as it does with `threading.Condition`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::tracker::SIGNAL_CHECK;

/// Source of [`thread_key`] values; 0 means "no owner".
static NEXT_THREAD_KEY: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD_KEY: u64 = NEXT_THREAD_KEY.fetch_add(1, Ordering::Relaxed);
}

/// A process-unique, never reused, non-zero number for the calling thread.
fn thread_key() -> u64 {
    THREAD_KEY.with(|k| *k)
}

struct Inner {
    /// [`thread_key`] of the owning thread, 0 when unlocked.
    owner: u64,
    /// Recursion level of the owner.
    count: u64,
    /// Threads blocked until the lock is free.
    lock_waiters: usize,
    /// Tickets of the threads in `wait`, oldest first; `notify` removes tickets, so a waiter
    /// whose ticket is gone was notified.
    cond_waiters: VecDeque<u64>,
    next_ticket: u64,
}

/// A re-entrant lock with a condition variable, interchangeable with `threading.Condition()`
/// inside a `concurrent.futures.Future`.
#[pyclass(module = "cmwq._cmwq", name = "_FutureCondition", frozen)]
pub(crate) struct FutureCondition {
    inner: Mutex<Inner>,
    /// Signalled when the lock is released with `lock_waiters` non-zero and on `notify`.
    cv: Condvar,
}

/// When a wait ends; `None` waits forever.
type Deadline = Option<Instant>;

fn deadline_after(seconds: f64) -> PyResult<Instant> {
    let d = Duration::try_from_secs_f64(seconds.max(0.0))
        .map_err(|_| PyOverflowError::new_err(format!("timeout value is too large: {seconds}")))?;
    Instant::now()
        .checked_add(d)
        .ok_or_else(|| PyOverflowError::new_err(format!("timeout value is too large: {seconds}")))
}

/// How long to block next: until the deadline, but at most [`SIGNAL_CHECK`]; `None` once the
/// deadline has passed.
fn next_slice(deadline: Deadline) -> Option<Duration> {
    match deadline {
        None => Some(SIGNAL_CHECK),
        Some(d) => {
            d.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()).map(|left| left.min(SIGNAL_CHECK))
        }
    }
}

impl FutureCondition {
    /// A new, unlocked condition.
    pub(crate) fn new() -> FutureCondition {
        FutureCondition {
            inner: Mutex::new(Inner {
                owner: 0,
                count: 0,
                lock_waiters: 0,
                cond_waiters: VecDeque::new(),
                next_ticket: 0,
            }),
            cv: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding this lock; ignore poisoning rather than panic callers.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the lock if it is free or already ours; false if another thread owns it.
    fn try_lock(st: &mut Inner, me: u64) -> PyResult<bool> {
        if st.owner == 0 {
            st.owner = me;
            st.count = 1;
            Ok(true)
        } else if st.owner == me {
            st.count =
                st.count.checked_add(1).ok_or_else(|| PyOverflowError::new_err("internal lock count overflowed"))?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Acquires the lock, blocking (with the GIL released) until `deadline`; runs signal
    /// handlers while it blocks, and a handler's exception ends the attempt.
    pub(crate) fn lock(&self, py: Python<'_>, deadline: Deadline) -> PyResult<bool> {
        let me = thread_key();
        if Self::try_lock(&mut self.state(), me)? {
            return Ok(true);
        }
        loop {
            // Some(result) when done, None to run signal handlers and go on.
            let attempt = py.detach(|| {
                let mut st = self.state();
                st.lock_waiters += 1;
                let result = loop {
                    if st.owner == 0 {
                        st.owner = me;
                        st.count = 1;
                        break Some(true);
                    }
                    let Some(slice) = next_slice(deadline) else { break Some(false) };
                    let (guard, timeout) = self.cv.wait_timeout(st, slice).unwrap_or_else(PoisonError::into_inner);
                    st = guard;
                    if timeout.timed_out() && st.owner != 0 && next_slice(deadline).is_some() {
                        break None;
                    }
                };
                st.lock_waiters -= 1;
                result
            });
            match attempt {
                Some(got) => return Ok(got),
                None => py.check_signals()?,
            }
        }
    }

    /// Releases one level of the lock.
    pub(crate) fn unlock(&self) -> PyResult<()> {
        let mut st = self.state();
        if st.owner != thread_key() {
            return Err(PyRuntimeError::new_err("cannot release un-acquired lock"));
        }
        st.count -= 1;
        if st.count == 0 {
            st.owner = 0;
            if st.lock_waiters > 0 {
                drop(st);
                self.cv.notify_all();
            }
        }
        Ok(())
    }

    /// True if some thread waits in `wait` (only meaningful to the owner).
    pub(crate) fn has_waiters(&self) -> bool {
        !self.state().cond_waiters.is_empty()
    }

    /// Wakes up to `n` waiters; the caller must own the lock.
    pub(crate) fn notify_n(&self, n: usize) -> PyResult<()> {
        let mut st = self.state();
        if st.owner != thread_key() {
            return Err(PyRuntimeError::new_err("cannot notify on un-acquired lock"));
        }
        let n = n.min(st.cond_waiters.len());
        if n > 0 {
            st.cond_waiters.drain(..n);
            drop(st);
            self.cv.notify_all();
        }
        Ok(())
    }

    /// Takes the lock back at recursion level `count` after a wait, whatever happens: like
    /// `RLock._acquire_restore`, this cannot be interrupted.
    fn restore(&self, py: Python<'_>, me: u64, count: u64) {
        let mut st = self.state();
        if st.owner == 0 {
            st.owner = me;
            st.count = count;
            return;
        }
        drop(st);
        py.detach(|| {
            let mut st = self.state();
            st.lock_waiters += 1;
            while st.owner != 0 {
                st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.lock_waiters -= 1;
            st.owner = me;
            st.count = count;
        });
    }

    /// `Condition.wait`: gives up the lock, waits for a notification until `deadline`, takes
    /// the lock back; true if notified.
    fn wait_until(&self, py: Python<'_>, deadline: Deadline) -> PyResult<bool> {
        let me = thread_key();
        let (ticket, count) = {
            let mut st = self.state();
            if st.owner != me {
                return Err(PyRuntimeError::new_err("cannot wait on un-acquired lock"));
            }
            let count = st.count;
            st.owner = 0;
            st.count = 0;
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            st.cond_waiters.push_back(ticket);
            let wake = st.lock_waiters > 0;
            drop(st);
            if wake {
                self.cv.notify_all();
            }
            (ticket, count)
        };
        let outcome = loop {
            // Some(notified) when done, None to run signal handlers and go on. On a worker, the
            // wait is a sleep its pool must know of at once, whatever the detector: the item
            // waited for may need this worker's place (`Future.result()` inside an item).
            let attempt = py.detach(|| {
                wq_core::blocking(|| {
                    let mut st = self.state();
                    loop {
                        let Some(at) = st.cond_waiters.iter().position(|&t| t == ticket) else { return Some(true) };
                        let Some(slice) = next_slice(deadline) else {
                            st.cond_waiters.remove(at);
                            return Some(false);
                        };
                        let (guard, timeout) = self.cv.wait_timeout(st, slice).unwrap_or_else(PoisonError::into_inner);
                        st = guard;
                        if timeout.timed_out() && next_slice(deadline).is_some() && st.cond_waiters.contains(&ticket) {
                            return None;
                        }
                    }
                })
            });
            match attempt {
                Some(notified) => break Ok(notified),
                None => {
                    if let Err(err) = py.check_signals() {
                        // Interrupted: stop waiting (as `threading.Condition.wait` does when its
                        // waiter lock's acquire raises).
                        let mut st = self.state();
                        if let Some(at) = st.cond_waiters.iter().position(|&t| t == ticket) {
                            st.cond_waiters.remove(at);
                        }
                        break Err(err);
                    }
                }
            }
        };
        self.restore(py, me, count);
        outcome
    }
}

#[pymethods]
impl FutureCondition {
    /// An unlocked condition.
    #[new]
    fn py_new() -> FutureCondition {
        FutureCondition::new()
    }

    /// Acquires the lock, as `RLock.acquire(blocking=True, timeout=-1)`.
    #[pyo3(signature = (blocking = true, timeout = -1.0))]
    fn acquire(&self, py: Python<'_>, blocking: bool, timeout: f64) -> PyResult<bool> {
        if !blocking {
            if timeout != -1.0 {
                return Err(PyValueError::new_err("can't specify a timeout for a non-blocking call"));
            }
            return Self::try_lock(&mut self.state(), thread_key());
        }
        let deadline = if timeout == -1.0 {
            None
        } else if timeout < 0.0 || timeout.is_nan() {
            return Err(PyValueError::new_err("timeout value must be a non-negative number"));
        } else {
            Some(deadline_after(timeout)?)
        };
        self.lock(py, deadline)
    }

    /// Releases one level of the lock; `RuntimeError` if the caller does not own it.
    fn release(&self) -> PyResult<()> {
        self.unlock()
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.lock(py, None)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.unlock()
    }

    /// Waits until notified or until `timeout` seconds pass; true unless it timed out.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = timeout.map(deadline_after).transpose()?;
        self.wait_until(py, deadline)
    }

    /// Waits until `predicate()` is true, as `threading.Condition.wait_for`; returns its last
    /// value.
    #[pyo3(signature = (predicate, timeout = None))]
    fn wait_for<'py>(
        &self,
        py: Python<'py>,
        predicate: &Bound<'py, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let deadline = timeout.map(deadline_after).transpose()?;
        let mut result = predicate.call0()?;
        while !result.is_truthy()? {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            self.wait_until(py, deadline)?;
            result = predicate.call0()?;
        }
        Ok(result)
    }

    /// Wakes up to `n` waiting threads; `RuntimeError` if the caller does not own the lock.
    #[pyo3(signature = (n = 1))]
    fn notify(&self, n: usize) -> PyResult<()> {
        self.notify_n(n)
    }

    /// Wakes every waiting thread; `RuntimeError` if the caller does not own the lock.
    fn notify_all(&self) -> PyResult<()> {
        self.notify_n(usize::MAX)
    }

    /// True if the calling thread owns the lock (as `Condition._is_owned`).
    fn _is_owned(&self) -> bool {
        self.state().owner == thread_key()
    }

    fn __repr__(&self) -> String {
        let st = self.state();
        let held = if st.owner == 0 { "unlocked" } else { "locked" };
        format!("<cmwq._FutureCondition {held} count={} waiters={}>", st.count, st.cond_waiters.len())
    }
}
