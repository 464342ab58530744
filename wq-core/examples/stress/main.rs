//! Stress test of the wq-core engine with exact accounting.
//!
//! Many queues with random flags and `max_active`, several producer threads
//! and a destroyer thread run random interleavings of queue / queue_on /
//! execute / submit / cancel / cancel_sync / flush / queue_delayed /
//! mod_delayed / destroy (and re-create) for a fixed time. Every item
//! carries an id and counts its own runs; at the end the program proves
//! that every accepted queueing ran exactly once unless it was cancelled
//! (runs of an item == accepted queueings − successful cancels), that no
//! item ran concurrently with itself, that `max_active` and ordering were
//! never exceeded, that nothing ran on a queue after its `destroy` returned,
//! that nothing ran after `cancel_sync` returned, and that every pool's
//! `running` count went back to 0.
//!
//! ```text
//! cargo run --release -p wq-core --example stress -- --seconds 60 [--seed 7] [--producers 4] [--queues 8]
//! ```
//!
//! It ends with one line,
//! `stress: accepted=… run=… cancelled=… refused=… lost=0 duplicated=0 limit_violations=0`,
//! and exits with status 1 on any violation (2 on bad arguments, 3 on a hang).
//!
//! The code: `config.rs` (command line, random numbers), `model.rs` (the
//! queues and items, which check the limits as they run), `driver.rs` (the
//! producer and destroyer threads) and `check.rs` (the final accounting).
//! `tests/stress.rs` includes this file for a short run.

mod check;
mod config;
mod driver;
mod model;

use config::USAGE;
pub use config::{Config, Rng};
pub use driver::run;

#[allow(dead_code)]
fn main() {
    let cfg = match Config::from_args(std::env::args().skip(1)) {
        Ok(cfg) => cfg,
        Err(msg) => {
            eprintln!("stress: {msg}\n{USAGE}");
            std::process::exit(2);
        }
    };
    eprintln!("stress: {cfg:?}");
    let report = run(&cfg);
    println!("{}", report.summary());
    if !report.ok() {
        for m in &report.messages {
            eprintln!("  {m}");
        }
        std::process::exit(1);
    }
}
