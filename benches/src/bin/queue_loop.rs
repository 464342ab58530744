//! `queue_loop`: the `queue` of prepared `Work`s, round after round, for profiling the
//! per-item path.
//!
//! Usage: `cargo run --release -p benches --bin queue_loop -- [--items N] [--rounds R]
//! [--submitters S] [--unbound] [--fresh] [--each]`
//!
//! `compare`'s throughput rows build fresh Works and a fresh runtime for every 200,000-item run,
//! so a profile of them is mostly allocation and thread start-up. Here the same Works are queued
//! again every round (a Work is queueable again once it ran), on one runtime, so `perf record`
//! sees the queueing and running of items and little else. `--fresh` builds a new runtime for
//! every round instead, warmed with four items as `compare` warms its peers: the difference is
//! what a runtime's first burst costs (its queues grow, so their memory is faulted in).
//! Prints items/s per round (median [min–max]), with `--each` every round's rate in order, and
//! exits with status 1 if any round lost or duplicated an item.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
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
    fresh: bool,
    each: bool,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options { items: 200_000, rounds: 20, submitters: 1, unbound: false, fresh: false, each: false };
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
            "--fresh" => o.fresh = true,
            "--each" => o.each = true,
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

/// A runtime and its queue (unbound or bound).
fn build(unbound: bool) -> Result<(Runtime, Workqueue), String> {
    let rt = Runtime::builder().build().map_err(|e| format!("building the runtime: {e}"))?;
    let mut b = rt.workqueue("queue-loop");
    if unbound {
        b = b.flags(Flags::UNBOUND);
    }
    let wq = b.build().map_err(|e| format!("building the workqueue: {e}"))?;
    Ok((rt, wq))
}

/// Runs `n` items one after another, each waited for, so that the pool's workers exist (as
/// `compare`'s warm-up does). `bump` counts one completion.
fn warm(wq: &Workqueue, n: usize, bump: impl Fn() + Clone + Send + 'static) -> Result<(), String> {
    for _ in 0..n {
        let c = wq.submit(bump.clone()).map_err(|e| format!("submitting a warm-up item: {e}"))?;
        c.wait().map_err(|e| format!("a warm-up item: {e}"))?;
    }
    Ok(())
}

fn run(o: &Options) -> Result<Vec<f64>, String> {
    const WARM_UP: usize = 4;
    let done: Arc<Vec<CachePadded<AtomicUsize>>> = Arc::new((0..STRIPES).map(|_| CachePadded::default()).collect());
    let per = o.items / o.submitters;
    // Each Work's own run count: a lost item and a duplicated one would cancel out in the total.
    let runs: Arc<Vec<AtomicU32>> = Arc::new((0..per * o.submitters).map(|_| AtomicU32::new(0)).collect());
    let batches: Vec<Vec<Work>> = (0..o.submitters)
        .map(|b| {
            (0..per)
                .map(|i| {
                    let (done, runs, me) = (done.clone(), runs.clone(), b * per + i);
                    Work::new(move || {
                        runs[me].fetch_add(1, Relaxed);
                        STRIPE.with(|&s| done[s].fetch_add(1, Relaxed));
                    })
                })
                .collect()
        })
        .collect();
    let counted = || done.iter().map(|c| c.load(Relaxed)).sum::<usize>();
    let bump = {
        let done = done.clone();
        move || _ = done[0].fetch_add(1, Relaxed)
    };
    let items = per * o.submitters;
    let shared = if o.fresh { None } else { Some(build(o.unbound)?) };
    let mut expected = 0;
    let mut rates = Vec::with_capacity(o.rounds);
    for _ in 0..o.rounds {
        let fresh = if o.fresh {
            let (rt, wq) = build(o.unbound)?;
            warm(&wq, WARM_UP, bump.clone())?;
            expected += WARM_UP;
            Some((rt, wq))
        } else {
            None
        };
        let (_, wq) = fresh.as_ref().or(shared.as_ref()).expect("a runtime per round, or one for all");
        expected += items;
        let elapsed = round(wq, &batches, counted, expected)?;
        rates.push(items as f64 / elapsed.as_secs_f64());
        // Duplicates would show as a count above the total once everything settled.
        wq.flush().map_err(|e| format!("flushing the workqueue: {e}"))?;
        if counted() != expected {
            return Err(format!("{} runs counted for {expected} queued items", counted()));
        }
        let round = rates.len() as u32;
        if let Some((i, n)) = runs.iter().map(|r| r.load(Relaxed)).enumerate().find(|&(_, n)| n != round) {
            return Err(format!("Work {i} ran {n} times in {round} rounds"));
        }
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
            if o.each {
                let each: Vec<String> = rates.iter().map(|r| format!("{:.2}", r / 1e6)).collect();
                println!("rounds (M/s): {}", each.join(" "));
            }
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
