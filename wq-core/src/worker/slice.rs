//! A short scheduler slice for a worker that waits in a quiet pool.
//!
//! A worker woken for one item usually wakes on the queueing thread's CPU
//! (a bound pool's worker is pinned there; the scheduler keeps an unbound
//! one there too, as it does any thread woken by a running one). With the
//! default slice it waits there until the queueing thread blocks or its
//! slice ends. Asking EEVDF for a short slice (`sched_runtime`, Linux 6.12
//! on) gives the worker an earlier deadline, so its wake-up preempts the
//! queueing thread and the item starts at once.
//!
//! The same preemption would cost a burst its batches (each item would
//! start before the next is queued) and a busy pool its CPU (every woken
//! sleeper would preempt the running worker). So the short slice is only
//! for the lone wake-up (see `pool/README.md`, "A lone wake-up's slice"):
//!
//! 1. a worker about to park asks for it if its pool is quiet: no worker
//!    runs and nothing is queued; otherwise it parks with the default slice;
//! 2. a worker that takes an entry with more behind it (a backlog, or a
//!    stash) goes back to the default slice before running it.
//!
//! Each step is a pair of system calls, made only when the slice changes:
//! at most twice per busy period, never per item.

use std::time::Duration;

use crate::pool::emit_quietly;
use crate::sys;

/// The slice a worker asked for last, and the short one it may ask for.
pub(super) struct WakeSlice {
    /// `None` once asking failed (or the runtime was built without it).
    short: Option<Duration>,
    /// Whether the thread runs with `short` now.
    in_effect: bool,
}

impl WakeSlice {
    pub(super) fn new(short: Option<Duration>) -> WakeSlice {
        WakeSlice { short, in_effect: false }
    }

    /// Step 1: the worker parks; `quiet` says its pool has nothing running or queued.
    pub(super) fn before_park(&mut self, quiet: bool, worker: &str) {
        self.set(quiet, worker);
    }

    /// Step 2: the entry the worker takes has more behind it.
    pub(super) fn backlog(&mut self, worker: &str) {
        self.set(false, worker);
    }

    fn set(&mut self, short: bool, worker: &str) {
        let Some(slice) = self.short else { return };
        if self.in_effect == short {
            return;
        }
        match sys::set_current_slice(short.then_some(slice)) {
            Ok(()) => self.in_effect = short,
            Err(err) => {
                // Seccomp or an unusual policy: this worker stops asking. A
                // short slice it could not give back stays (a lone item's
                // latency, bought for a busy worker), hence the warning.
                self.short = None;
                if self.in_effect {
                    emit_quietly(
                        || tracing::warn!(target: "wq", worker, %err, "could not give back a short scheduler slice"),
                    );
                } else {
                    emit_quietly(
                        || tracing::debug!(target: "wq", worker, %err, "no short scheduler slice for lone wake-ups"),
                    );
                }
            }
        }
    }
}
