//! The tour: the kernel documentation's example execution scenarios
//! (`workqueue.rst`, "Example Execution Scenarios"), run for real.
//!
//! Work items w0, w1 and w2 go to a bound queue on one CPU. w0 burns CPU,
//! sleeps, burns again; w1 and w2 burn and sleep. The sleeps are plain
//! `std::thread::sleep` calls: nothing tells the runtime about them, the
//! sleep detector notices. Units are the document's doubled: burn 10 ms (of
//! thread CPU time), sleep 20 ms.
//!
//! Run it with `cargo run --release -p examples --bin tour`. It also
//! writes the cmwq scenarios' timeline as a Chrome trace (one track per
//! worker) to the temp directory.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use wq_core::{Detector, Flags, Runtime, Topology, Workqueue};

const BURN: Duration = Duration::from_millis(10);
const SLEEP: Duration = Duration::from_millis(20);

/// Burns `d` of this thread's CPU time: a preempted burn cannot finish early.
fn burn(d: Duration) {
    let start = cpu_time();
    while cpu_time() - start < d {
        std::hint::spin_loop();
    }
}

fn cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

type Log = Arc<Mutex<Vec<(Instant, String)>>>;

/// Queues w0 on `q0` and w1, w2 on `q1`, and prints the timeline.
fn scenario(title: &str, q0: &Workqueue, q1: &Workqueue) {
    let log: Log = Arc::default();
    let t0 = Instant::now();
    let mut done = Vec::new();
    for (name, q, burns_again) in [("w0", q0, true), ("w1", q1, false), ("w2", q1, false)] {
        let log = log.clone();
        let note = move |what: &str| log.lock().unwrap().push((Instant::now(), format!("{name} {what}")));
        let item = q.submit(move || {
            note("starts and burns CPU");
            burn(BURN);
            note("sleeps");
            thread::sleep(SLEEP);
            if burns_again {
                note("wakes up and burns CPU");
                burn(BURN);
                note("finishes");
            } else {
                note("wakes up and finishes");
            }
        });
        done.push(item.expect("the queue accepts work"));
    }
    for d in done {
        d.wait().expect("no work item panics");
    }
    println!("\n{title}\n\n TIME IN MSECS  EVENT");
    let mut events = log.lock().unwrap().clone();
    events.sort();
    for (at, what) in events {
        println!(" {:>13.0}  {what}", (at - t0).as_secs_f64() * 1e3);
    }
}

/// The first CPU this process may run on (CPU 0 unless `taskset` or a
/// container says otherwise): the one the scenarios share.
fn first_cpu() -> usize {
    Topology::detect().cpus()[0]
}

fn one_cpu_runtime(detector: Detector) -> Runtime {
    Runtime::builder()
        .cpus([first_cpu()])
        .detector(detector)
        // The scenario's 10 ms burns must not count as CPU hogs.
        .cpu_hog_threshold(Duration::from_millis(100))
        .build()
        .expect("the process may run on this CPU")
}

fn main() -> Result<(), wq_core::Error> {
    println!("cmwq for userspace: the kernel's example execution scenarios on one CPU (CPU {})", first_cpu());
    println!("(burn = {BURN:?} of CPU time, sleep = {SLEEP:?} in std::thread::sleep)");

    let blind = one_cpu_runtime(Detector::ExplicitOnly);
    let q = blind.workqueue("q0").build()?;
    scenario("Without sleep detection: the original, single-worker workqueue behaviour", &q, &q);

    let rt = one_cpu_runtime(Detector::Auto);
    let (detector, why) = rt.detector();
    println!("\nSleep detector: {detector} ({why})");
    rt.start_trace();

    let q0 = rt.workqueue("q0").max_active(3).build()?;
    scenario("cmwq with max_active >= 3", &q0, &q0);

    let q0 = rt.workqueue("q0_max2").max_active(2).build()?;
    scenario("cmwq with max_active == 2", &q0, &q0);

    let q0 = rt.workqueue("q0_normal").build()?;
    let q1 = rt.workqueue("q1_intensive").flags(Flags::CPU_INTENSIVE).build()?;
    scenario("w1 and w2 on q1, which has CPU_INTENSIVE set", &q0, &q1);

    for q in [&q0, &q1] {
        // A worker accounts for an item after it signalled its completion:
        // flush first, so the counts include every item that ran.
        q.flush()?;
        let s = q.stats();
        println!(
            "\n{}: total {} in flight {} CPU time {:?} concurrency-management wake-ups {}",
            q.name(),
            s.total,
            s.in_flight,
            s.cpu_time,
            s.cm_wakeups
        );
    }
    println!("\n{}", rt.dump());
    let trace = rt.stop_trace();
    let path = std::env::temp_dir().join("cmwq-tour-trace.json");
    match trace.write_chrome_json(&path) {
        Ok(()) => println!(
            "Timeline of the cmwq scenarios ({} events), one track per worker: {}",
            trace.events.len(),
            path.display()
        ),
        Err(err) => eprintln!("could not write the trace to {}: {err}", path.display()),
    }
    println!("Open it in https://ui.perfetto.dev or chrome://tracing.");
    Ok(())
}
