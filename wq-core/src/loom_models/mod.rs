//! Loom models of the handshakes that span more than one state word:
//! `queue` against `cancel_sync`, the `flush`/`cancel_sync` wait, the pool's
//! `nr_running` wake-up through its inbox, the monitor's parking, a worker's deferred
//! accounting against `flush`, two threads changing a worker's flags, and an
//! unbound queue's queue-wide limit across pods.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p wq-core --lib loom --release`.
//! Models (1) and (2) drive the real [`State`] (its atomics are loom's under
//! `--cfg loom`); the helpers around it follow `WorkShared` in
//! `work/mod.rs` step for step (plus the fences below), because `WorkShared`
//! itself uses `std` locks. Models (3) to (7) restate protocols whose real
//! code uses `std` types throughout (`pool/mod.rs`, `monitor.rs`,
//! `pool/batch.rs`, `worker/mod.rs`, `pool/pwq.rs`); each names the code it follows, and a
//! change to that code must be mirrored here.
//!
//! Loom treats `SeqCst` accesses as `AcqRel` (loom's README, issue #180),
//! which allows the store-buffering outcome that `SeqCst` forbids: both
//! sides of a "write mine, then read yours" handshake reading the old value.
//! The real code relies on `SeqCst` exactly there, so the models restate
//! that order with [`sc_order`], a `SeqCst` fence, which loom does model:
//! for this write-then-read pattern a `SeqCst` fence between the two
//! accesses forbids the same outcome as making both accesses `SeqCst`.
//! Without it loom reports lost wake-ups that cannot happen.
//!
//! Every model runs with a preemption bound of 3 so the whole file checks
//! in about a second; at that bound loom reported each protocol broken on
//! purpose (two steps swapped), and runs with `LOOM_MAX_PREEMPTIONS=5` pass.

mod pool;
mod queue_limit;
mod work;
mod worker_flags;

use loom::model::Builder;
use loom::sync::atomic::{fence, Ordering::SeqCst};

/// Checks `f` with loom under a preemption bound: the bound keeps each model
/// to seconds, and every interleaving these protocols can get wrong needs
/// fewer preemptions than that. `LOOM_MAX_PREEMPTIONS`, if set, overrides it
/// (read by `Builder::new`) for a deeper run.
fn check(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    builder.preemption_bound.get_or_insert(preemptions);
    builder.check(f);
}

/// The order `SeqCst` gives the real code between a thread's write and its
/// next read of another location (see the module doc: loom needs it spelled
/// as a fence).
fn sc_order() {
    fence(SeqCst);
}
