//! Workqueues as futures executors.
//!
//! `wq-futures` turns any [`wq_core::Workqueue`] into an executor for
//! `Send` futures. A spawned task is an [`async-task`](async_task) task whose
//! every poll is one work item on the queue, so the queue's policy governs
//! the polls: `HIGHPRI` polls run on the high-priority pools, `max_active`
//! caps how many polls run at once, an ordered queue polls one task at a
//! time in wake order, and a bound queue runs a woken task on the pool of the
//! CPU that woke it. A task that blocks inside `poll` does not stall the
//! other tasks of its pool: the pool notices the sleeping worker (explicit
//! [`wq_core::blocking`] hooks, or the runtime's sleep detector) and starts
//! another one.
//!
//! What is here:
//! - [`WorkqueueExt::spawn`] → [`JoinHandle`], with tokio's semantics:
//!   dropping it detaches the task, [`JoinHandle::abort`] cancels it, a panic
//!   becomes a [`JoinError`] and the worker survives.
//! - [`WorkqueueExt::spawn_blocking`] → the same [`JoinHandle`] for a
//!   blocking closure run as one work item (one allocation per call,
//!   reused by later calls when detached on an unbound queue; the engine
//!   of `wq_tokio_compat::spawn_blocking`).
//! - [`Executor`], a `futures::task::Spawn` implementation, for libraries
//!   that take a spawner.
//! - [`block_on`] for `main` functions and tests.
//! - [`unblock`] / [`unblock_on`], a replacement for smol's
//!   `blocking::unblock`.
//!
//! Futures built on smol's reactor (`async-io` timers and sockets,
//! `async-net`) run unchanged: async-io drives its reactor on its own thread
//! when no thread is blocked in `async_io::block_on`.
//!
//! # Example
//!
//! ```
//! use wq_core::{Flags, Workqueue};
//! use wq_futures::{block_on, WorkqueueExt};
//!
//! // A high-priority queue whose polls run at most 4 at a time per CPU.
//! let wq = Workqueue::builder("example_futures")
//!     .flags(Flags::HIGHPRI)
//!     .max_active(4)
//!     .build()
//!     .expect("valid queue settings");
//!
//! let handles: Vec<_> = (0..10u64).map(|i| wq.spawn(async move { i * i })).collect();
//! let sum: u64 = block_on(async {
//!     let mut sum = 0;
//!     for handle in handles {
//!         sum += handle.await.expect("task neither panicked nor was cancelled");
//!     }
//!     sum
//! });
//! assert_eq!(sum, 285);
//!
//! // A panic is reported through the handle; the worker survives.
//! let err = block_on(wq.spawn(async { panic!("boom") })).unwrap_err();
//! assert!(err.is_panic());
//! ```

mod block_on;
mod call;
mod executor;
mod task;
mod unblock;

pub use crate::block_on::block_on;
pub use crate::executor::{spawn, Executor, WorkqueueExt};
pub use crate::task::{AbortHandle, Id, JoinError, JoinHandle};
pub use crate::unblock::{unblock, unblock_on, Unblock};
