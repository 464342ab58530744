//! `first_item`: how long the first item of a new workqueue waits to start.
//!
//! Usage: `cargo run --release -p benches --bin first_item -- [--runs N]`
//!
//! Each run builds a runtime and a bound workqueue, lets them settle for 20 ms, then submits one
//! item and records the time from `submit` to the item's start. Prints the median, the 90th
//! percentile and the maximum over the runs. A pool has no worker until its first item arrives
//! (`wq-core/src/pool/README.md`, "Pools start empty"), so this is mostly how long the runtime
//! takes to create one.

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use wq_core::Runtime;

/// How long a new runtime and queue are left alone before the item is submitted.
const SETTLE: Duration = Duration::from_millis(20);

fn parse(args: impl Iterator<Item = String>) -> Result<usize, String> {
    let mut runs = 60;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                let v = args.next().ok_or("--runs needs a number")?;
                runs = match v.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("--runs takes a positive whole number, not {v:?}")),
                };
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(runs)
}

/// One run: the first item's submit-to-start time, in µs.
fn first_item_wait() -> Result<f64, String> {
    let rt = Runtime::builder().build().map_err(|e| format!("building the runtime: {e}"))?;
    let wq = rt.workqueue("first-item").build().map_err(|e| format!("building the workqueue: {e}"))?;
    thread::sleep(SETTLE);
    let submitted = Instant::now();
    let started = wq
        .submit(Instant::now)
        .map_err(|e| format!("submitting: {e}"))?
        .wait()
        .map_err(|e| format!("the item: {e}"))?;
    Ok(started.saturating_duration_since(submitted).as_secs_f64() * 1e6)
}

fn main() -> ExitCode {
    let runs = match parse(std::env::args().skip(1)) {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("first_item: {e}");
            return ExitCode::from(2);
        }
    };
    let mut waits = Vec::with_capacity(runs);
    for _ in 0..runs {
        match first_item_wait() {
            Ok(us) => waits.push(us),
            Err(e) => {
                eprintln!("first_item: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    waits.sort_by(f64::total_cmp);
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
    println!(
        "first item of a new bound workqueue, submit to start, {runs} runs: p50 {:.1} µs, p90 {:.1} µs, max {:.1} µs",
        at(0.5),
        at(0.9),
        at(1.0)
    );
    ExitCode::SUCCESS
}
