//! The peers: wq-core and the pools it is measured against.

pub mod adapters;
mod others;
pub mod wq;

pub use others::{FixedPool, RayonSpawn, SmolUnblock, TokioBlocking};
