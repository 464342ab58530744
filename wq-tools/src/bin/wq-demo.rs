//! `wq-demo`: a process with a published cmwq runtime, to try `wq` on.
//!
//! ```text
//! wq-demo [--items N] [--trickle MS] [QUEUE...]
//! ```
//!
//! Builds a runtime with the named queues (default `demo-io demo-cpu`),
//! runs N items on each (default 20), waits until its published snapshot
//! shows them all, prints `ready <pid>`, and then, with `--trickle`, keeps
//! queueing one item per queue every MS milliseconds. It exits when its
//! standard input closes (Ctrl-D), dropping the runtime, which removes the
//! published file.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use wq_core::{blocking, PublishedFile, Runtime, Snapshot, Workqueue};

struct Options {
    items: u64,
    trickle: Option<Duration>,
    queues: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options { items: 20, trickle: None, queues: Vec::new() };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut number = |what: &str| -> Result<u64, String> {
            let v = args.next().ok_or_else(|| format!("{what} needs a number"))?;
            v.parse().map_err(|_| format!("{what} needs a number, not {v:?}"))
        };
        match arg.as_str() {
            "--items" => opts.items = number("--items")?,
            "--trickle" => opts.trickle = Some(Duration::from_millis(number("--trickle")?.max(1))),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            name => opts.queues.push(name.to_owned()),
        }
    }
    if opts.queues.is_empty() {
        opts.queues = vec!["demo-io".into(), "demo-cpu".into()];
    }
    Ok(opts)
}

/// One item: a short sleep (so concurrency management shows) and a bit of CPU.
fn item() {
    blocking(|| thread::sleep(Duration::from_millis(1)));
    std::hint::black_box((0..20_000u64).fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b)));
}

/// Waits until our own published snapshot shows `want` finished items per queue.
fn wait_published(queues: &[Workqueue], want: u64) -> Result<(), String> {
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::from("no snapshot file");
    while Instant::now() < deadline {
        let done = |s: &Snapshot| {
            queues.iter().all(|wq| s.queues.iter().any(|q| q.name == wq.name() && q.stats.total == want))
        };
        match PublishedFile::list().into_iter().find(|f| f.pid == me).map(|f| f.read()) {
            Some(Ok(snap)) if done(&snap) => return Ok(()),
            Some(Ok(snap)) => last = format!("last snapshot: generation {}, {:?}", snap.generation, snap.queues),
            Some(Err(err)) => last = err.to_string(),
            None => {}
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!("the runtime's snapshot never showed {want} items per queue ({last})"))
}

fn run(opts: &Options) -> Result<(), String> {
    let rt = Runtime::builder().build().map_err(|e| format!("cannot build the runtime: {e}"))?;
    let queues = opts
        .queues
        .iter()
        .map(|name| rt.workqueue(name).build().map_err(|e| format!("cannot create queue {name:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    for wq in &queues {
        let done =
            (0..opts.items).map(|_| wq.submit(item)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
        for c in done {
            c.wait().map_err(|e| format!("an item panicked: {e}"))?;
        }
    }
    wait_published(&queues, opts.items)?;
    let stop = Arc::new(AtomicBool::new(false));
    let trickler = opts.trickle.map(|every| {
        let (queues, stop) = (queues.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for wq in &queues {
                    let _ = wq.execute(item);
                }
                thread::sleep(every);
            }
        })
    });
    println!("ready {}", std::process::id());
    io::stdout().flush().map_err(|e| e.to_string())?;
    // Until standard input closes.
    for line in io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(t) = trickler {
        let _ = t.join();
    }
    for wq in &queues {
        wq.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args).and_then(|opts| run(&opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wq-demo: {err}");
            eprintln!("usage: wq-demo [--items N] [--trickle MS] [QUEUE...]");
            ExitCode::FAILURE
        }
    }
}
