//! Atomics of the model-checked state machines: `std`'s, or loom's when
//! model checking (`RUSTFLAGS="--cfg loom" cargo test -p wq-core --lib loom`).
//! The rest of the crate uses `std` directly.

#[cfg(loom)]
pub(crate) use loom::sync::atomic;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic;
