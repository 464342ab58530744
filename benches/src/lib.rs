//! Side-by-side benchmarks of wq-core against the pools people use today: tokio's
//! `spawn_blocking`, `rayon_core::spawn`, smol's `blocking::unblock` and a fixed std-thread pool.
//!
//! The `compare` program (`cargo run --release -p benches --bin compare -- [scenario...]`) runs
//! every scenario against every peer in one process, interleaving the peers over several rounds,
//! and prints one Markdown table per scenario (medians with min–max, and ratios to wq-core).
//! `cargo bench -p benches --bench hot_paths` holds criterion micro-benchmarks of wq-core's hot
//! paths for before/after comparisons.
//!
//! The library is the harness: a [`Peer`] trait that each pool implements once, the scenarios as
//! generic functions over it, completion tracking that catches lost and duplicated items, and
//! the OS measurements (thread CPU time, `getrusage`, `/proc/self/status` thread counts).
//!
//! ```
//! use benches::peers::FixedPool;
//! use benches::scenario::{throughput, ThroughputConfig};
//! use std::time::Duration;
//!
//! let pool = FixedPool::new(2, None).unwrap();
//! let cfg = ThroughputConfig { items: 20_000, timeout: Duration::from_secs(30) };
//! let run = throughput::run(&pool, &cfg, 1).unwrap();
//! assert!(run.integrity.is_clean());
//! println!("{:.0} empty items/s", run.items_per_sec);
//! ```

pub mod peer;
pub mod peers;
pub mod scenario;
pub mod stats;
pub mod sys;
pub mod targets;
pub mod tracker;

pub use peer::{registry, Peer, PeerError, PeerSpec, RunError, Runner};
pub use scenario::Scenario;
pub use tracker::Integrity;
