//! Synchronisation primitives: `std`'s, or loom's when model checking
//! (`RUSTFLAGS="--cfg loom" cargo test -p wq-core --lib loom`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic;
