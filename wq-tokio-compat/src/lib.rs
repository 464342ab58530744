//! A drop-in for tokio's `spawn_blocking` on cmwq workqueues, and tokio
//! futures polled on workqueue workers.
//!
//! tokio's `spawn_blocking` gives every concurrent blocking call its own
//! thread (up to 512), with no priorities, no per-purpose limits and no
//! ordering. This crate keeps tokio's API and runs the calls on
//! concurrency-managed workqueues instead: a pool starts another worker
//! only when a running one goes to sleep, so CPU-bound calls do not pile
//! up threads, and each queue carries its own policy.
//!
//! - [`spawn_blocking`]: exactly tokio's signature and handle API
//!   ([`JoinHandle`], [`JoinError`]); migrating is a one-line `use` change.
//!   [`spawn_blocking_on`] picks a queue (`CPU_INTENSIVE` hashing, an
//!   ordered log writer, a `max_active`-limited resource).
//! - [`block_in_place`]: marks a wq worker as sleeping, defers to tokio's
//!   own on a tokio multi-thread worker, runs the closure elsewhere.
//! - [`spawn_on`] / [`spawn_on_handle`]: poll a future that uses tokio
//!   sockets and timers on wq workers, with the runtime's context entered.
//!
//! # Shutdown
//!
//! Blocking work belongs to its workqueue, not to a tokio runtime.
//! Dropping (or `shutdown_background`-ing) the tokio runtime leaves
//! queued and running closures alone: they all run to the end and their
//! handles still deliver, awaited on any executor or with
//! [`wq_futures::block_on`]. Dropping every handle to a queue does not
//! drop its work either. To stop a queue the way tokio's
//! `Runtime::shutdown_timeout` stops its blocking pool, call
//! [`shutdown_timeout`]: the queued and running closures still run (tokio's
//! rule: queued blocking tasks run unless aborted), new ones are refused
//! (their handles resolve to a cancelled [`JoinError`]), and the caller
//! waits at most the given time. Futures given to [`spawn_on`] do depend on
//! their tokio runtime: once it is gone their tokio I/O fails and their
//! tokio timers panic, which their handle reports as a [`JoinError`].
//!
//! # Example
//!
//! ```
//! use wq_core::{Flags, Workqueue};
//! use wq_tokio_compat::{spawn_blocking, spawn_blocking_on};
//!
//! let rt = tokio::runtime::Runtime::new().unwrap();
//! let hashing = Workqueue::builder("example_hash")
//!     .flags(Flags::CPU_INTENSIVE)
//!     .build()
//!     .unwrap();
//! let (len, sum) = rt.block_on(async {
//!     let read = spawn_blocking(|| std::fs::read("Cargo.toml").map(|b| b.len()));
//!     let hash = spawn_blocking_on(&hashing, || (0..1_000u64).fold(0, |h, x| h ^ (x * 31)));
//!     (read.await.unwrap().unwrap(), hash.await.unwrap())
//! });
//! assert!(len > 0);
//! assert_eq!(sum, (0..1_000u64).fold(0, |h, x| h ^ (x * 31)));
//! ```

mod blocking;
mod spawn_on;

pub use crate::blocking::{
    block_in_place, blocking_queue, blocking_queue_on, shutdown_timeout, spawn_blocking, spawn_blocking_on,
    ShutdownTimedOut, BLOCKING_QUEUE_NAME,
};
pub use crate::spawn_on::{spawn_on, spawn_on_handle, SpawnOnError};
pub use wq_futures::{AbortHandle, Id, JoinError, JoinHandle};
