//! `queue_loop`: the `queue` of prepared `Work`s, round after round, for profiling the
//! per-item path.
//!
//! Usage: `cargo run --release -p benches --bin queue_loop -- [--items N] [--rounds R]
//! [--submitters S] [--unbound]`
//!
//! `compare`'s throughput rows build fresh Works and a fresh runtime for every 200,000-item run,
//! so a profile of them is mostly allocation and thread start-up. Here the same Works are queued
//! again every round (a Work is queueable again once it ran), on one runtime, so `perf record`
//! sees the queueing and running of items and little else. Prints items/s per round (median
//! [min–max]) and exits with status 1 if any round lost or duplicated an item.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use wq_core::{Flags, Runtime, Work, Workqueue};

/// Completions are counted on striped counters, so the items' own cost stays small.
const STRIPES: usize = 64;
/// A round that has not finished after this long lost an item.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
}

struct Options {
    items: usize,
    rounds: usize,
    submitters: usize,
    unbound: bool,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options { items: 200_000, rounds: 20, submitters: 1, unbound: false };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            let v = args.next().ok_or_else(|| format!("{name} needs a number"))?;
            match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{name} takes a positive whole number, not {v:?}")),
            }
        };
        match arg.as_str() {
            "--items" => o.items = number("--items")?,
            "--rounds" => o.rounds = number("--rounds")?,
            "--submitters" => o.submitters = number("--submitters")?,
            "--unbound" => o.unbound = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.items < o.submitters {
        return Err(format!("--items {} is fewer than --submitters {}", o.items, o.submitters));
    }
    Ok(o)
}

/// Queues every Work of `batches` (one batch per submitter thread, released together) and waits
/// until `counted` reaches `target`; the elapsed time.
fn round(
    wq: &Workqueue,
    batches: &[Vec<Work>],
    counted: impl Fn() -> usize,
    target: usize,
) -> Result<Duration, String> {
    let gate = Barrier::new(batches.len() + 1);
    thread::scope(|s| {
        let submitters: Vec<_> = batches
            .iter()
            .map(|works| {
                let gate = &gate;
                s.spawn(move || {
                    gate.wait();
                    // A Work that ran is idle again, so `false` means the queue refused it.
                    works.iter().all(|w| wq.queue(w))
                })
            })
            .collect();
        gate.wait();
        let start = Instant::now();
        while counted() < target {
            if start.elapsed() > ROUND_TIMEOUT {
                return Err(format!("{} of {target} items ran within {ROUND_TIMEOUT:?}", counted()));
            }
            thread::sleep(Duration::from_micros(100));
        }
        let elapsed = start.elapsed();
        for s in submitters {
            if !s.join().map_err(|_| "a submitter panicked".to_owned())? {
                return Err("the workqueue refused a Work".into());
            }
        }
        Ok(elapsed)
    })
}

fn run(o: &Options) -> Result<Vec<f64>, String> {
    let rt = Runtime::builder().build().map_err(|e| format!("building the runtime: {e}"))?;
    let mut b = rt.workqueue("queue-loop");
    if o.unbound {
        b = b.flags(Flags::UNBOUND);
    }
    let wq = b.build().map_err(|e| format!("building the workqueue: {e}"))?;
    let done: Arc<Vec<CachePadded<AtomicUsize>>> = Arc::new((0..STRIPES).map(|_| CachePadded::default()).collect());
    let per = o.items / o.submitters;
    let batches: Vec<Vec<Work>> = (0..o.submitters)
        .map(|_| {
            (0..per)
                .map(|_| {
                    let done = done.clone();
                    Work::new(move || {
                        STRIPE.with(|&s| done[s].fetch_add(1, Relaxed));
                    })
                })
                .collect()
        })
        .collect();
    let counted = || done.iter().map(|c| c.load(Relaxed)).sum::<usize>();
    let items = per * o.submitters;
    let mut rates = Vec::with_capacity(o.rounds);
    for r in 1..=o.rounds {
        let elapsed = round(&wq, &batches, counted, items * r)?;
        rates.push(items as f64 / elapsed.as_secs_f64());
    }
    // Duplicates would show as a count above the total once everything settled.
    wq.flush().map_err(|e| format!("flushing the workqueue: {e}"))?;
    if counted() != items * o.rounds {
        return Err(format!("{} runs counted for {} queued items", counted(), items * o.rounds));
    }
    Ok(rates)
}

fn main() -> ExitCode {
    let o = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("queue_loop: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(mut rates) => {
            rates.sort_by(f64::total_cmp);
            let m = |x: f64| x / 1e6;
            println!(
                "{} queue, {} submitter(s), {} items x {} rounds: {:.2} M/s [{:.2}–{:.2}]",
                if o.unbound { "unbound" } else { "bound" },
                o.submitters,
                o.items / o.submitters * o.submitters,
                o.rounds,
                m(rates[rates.len() / 2]),
                m(rates[0]),
                m(rates[rates.len() - 1])
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("queue_loop: {e}");
            ExitCode::FAILURE
        }
    }
}
