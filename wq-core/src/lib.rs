//! The Linux kernel's Concurrency Managed Workqueue (cmwq), in userspace.
//!
//! Blocking and CPU-heavy work needs threads, but how many? A fixed pool is
//! always the wrong size for someone; a thread per blocking call (tokio's
//! `spawn_blocking`) grows to hundreds. cmwq answers as the kernel does:
//! per-CPU worker pools keep **just enough workers running** — a new worker
//! starts only when the running one sleeps — and cheap, named
//! **workqueues** carry the policy: [`Flags::HIGHPRI`],
//! [`Flags::CPU_INTENSIVE`], [`Flags::UNBOUND`], ordered execution,
//! `max_active`, and flush/cancel/drain as a group.
//!
//! The pieces, with the kernel's names:
//! - [`Runtime`]: the per-CPU normal and highpri worker pools, unbound
//!   pools, the thread that creates workers and the timer of delayed work.
//! - [`Workqueue`]: a named domain; [`Workqueue::submit`] runs a closure
//!   and returns a [`Completion`] (also a `Future`).
//! - [`Work`] and [`DelayedWork`]: reusable work items with the kernel's
//!   state machine (pending bit, non-reentrancy, `cancel_sync`, `flush`).
//! - [`blocking`]: tells the pool that the calling worker sleeps, so another
//!   one takes over the pending work.
//! - [`recycle`]: the allocations of items that one thread queues and a
//!   worker on another CPU drops, handed back in batches (`submit` on
//!   unbound queues, and executors built on [`Workqueue::execute_shared`]).
//!
//! ```
//! use std::time::Duration;
//! use wq_core::{blocking, Flags, Work, Workqueue};
//!
//! // A queue for I/O-ish work: a worker that sleeps lets the next item start.
//! let io = Workqueue::builder("io").build()?;
//! let reads: Vec<_> = (0..4)
//!     .map(|i| io.submit(move || blocking(|| { std::thread::sleep(Duration::from_millis(10)); i })))
//!     .collect::<Result<_, _>>()?;
//! let total: i32 = reads.into_iter().map(|c| c.wait().unwrap()).sum();
//! assert_eq!(total, 6);
//!
//! // A reusable work item on a CPU-intensive queue.
//! let crunch = Workqueue::builder("crunch").flags(Flags::CPU_INTENSIVE).build()?;
//! let work = Work::new(|| { let _ = (0..1_000u64).product::<u64>(); });
//! assert!(crunch.queue(&work));
//! work.flush()?;
//! crunch.destroy()?;
//! assert!(crunch.try_queue(&work).is_err());
//! # Ok::<(), wq_core::Error>(())
//! ```
//!
//! Protocols are documented beside their code: `work/README.md` (the work
//! item state machine) and `pool/README.md` (concurrency management).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod completion;
mod delayed;
mod detect;
mod error;
#[cfg(all(test, loom))]
mod loom_models;
mod monitor;
mod pool;
mod publish;
pub mod recycle;
mod rescuer;
mod runtime;
mod stats;
mod sync;
mod sys;
mod system;
mod topology;
mod trace;
mod work;
mod worker;
mod workqueue;

pub use completion::{Completion, Panicked, SharedItem};
pub use delayed::DelayedWork;
pub use detect::Detector;
pub use error::Error;
pub use publish::{PublishedFile, QueueSnapshot, Snapshot};
pub use runtime::{Runtime, RuntimeBuilder, SpawnHook};
pub use stats::{PoolStats, RuntimeStats, WorkqueueStats};
pub use system::{
    system_freezable_wq, system_highpri_wq, system_long_wq, system_power_efficient_wq, system_unbound_wq, system_wq,
};
pub use topology::{Scope, Topology, TopologyError};
pub use trace::{Trace, TraceEvent, TraceKind};
pub use work::Work;
pub use worker::{blocking, ignore_sleeps, is_worker_thread, min_sleep};
pub use workqueue::{Attrs, Flags, Workqueue, WorkqueueBuilder, DEFAULT_MAX_ACTIVE, MAX_ACTIVE_LIMIT, MAX_NAME_LEN};
