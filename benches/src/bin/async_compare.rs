//! `async_compare`: wq-futures as an async executor against `async-executor` and tokio's
//! multi-thread runtime, side by side in one process.
//!
//! Usage: `cargo run --release -p benches --bin async_compare -- [--rounds N]`
//!
//! Two scenarios, each repeated over interleaved rounds (peer order rotates every round):
//! - **spawn+join**: spawn `TASKS` tiny tasks (each returns its index) from the main thread,
//!   then await every handle in order from the main thread; tasks per second, spawn to last
//!   join.
//! - **ping-pong**: two tasks bounce a counter through two `async-channel` channels of
//!   capacity 1 (the same channel type on every executor), `ROUND_TRIPS` round trips; the
//!   time per round trip.
//!
//! Every executor gets one thread per CPU: wq-futures a fresh runtime with a bound queue,
//! async-executor one `Executor::run` per CPU, tokio `new_multi_thread()` defaults. Prints
//! Markdown tables (median [min–max] and ratio to wq-futures) and exits with status 1 if any
//! run returned a wrong result, or if one did not finish within `STEP_TIMEOUT` (a lost task
//! or wake-up would otherwise hang the program).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use benches::stats::{num, rate, ratio, Spread, Table};
use benches::sys::cpus;
use wq_core::{Runtime, Workqueue};
use wq_futures::WorkqueueExt;

const TASKS: u64 = 100_000;
const ROUND_TRIPS: u64 = 50_000;
const DEFAULT_ROUNDS: usize = 5;
/// Each step (building a peer, one scenario on it) takes well under a second; one that runs
/// this long has lost a task or a wake-up.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Ends the process with status 1 when a step outlives `STEP_TIMEOUT`, naming it.
struct Watchdog {
    step: Arc<Mutex<Option<(String, Instant)>>>,
}

impl Watchdog {
    fn start() -> Watchdog {
        let step: Arc<Mutex<Option<(String, Instant)>>> = Arc::default();
        let watched = step.clone();
        thread::spawn(move || loop {
            thread::sleep(Duration::from_millis(100));
            if let Some((name, since)) = &*watched.lock().unwrap_or_else(|e| e.into_inner()) {
                if since.elapsed() > STEP_TIMEOUT {
                    eprintln!("async_compare: {name} did not finish within {STEP_TIMEOUT:?}");
                    std::process::exit(1);
                }
            }
        });
        Watchdog { step }
    }

    /// Starts timing `name`, ending the step before it.
    fn step(&self, name: String) {
        *self.step.lock().unwrap_or_else(|e| e.into_inner()) = Some((name, Instant::now()));
    }
}

/// One async executor under test.
trait AsyncPeer {
    /// Spawns `n` tasks returning their index, joins them all; the elapsed time, or an error
    /// naming what went wrong.
    fn spawn_join(&self, n: u64) -> Result<Duration, String>;
    /// Runs `n` ping-pong round trips between two tasks; the elapsed time.
    fn ping_pong(&self, n: u64) -> Result<Duration, String>;
}

/// The two tasks of the ping-pong, as plain futures any executor can run.
fn ping_pong_tasks(
    n: u64,
) -> (
    impl std::future::Future<Output = Result<u64, String>> + Send + 'static,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (ping_tx, ping_rx) = async_channel::bounded::<u64>(1);
    let (pong_tx, pong_rx) = async_channel::bounded::<u64>(1);
    let ping = async move {
        let mut last = 0;
        for i in 0..n {
            ping_tx.send(i).await.map_err(|e| e.to_string())?;
            last = pong_rx.recv().await.map_err(|e| e.to_string())?;
        }
        Ok(last)
    };
    let pong = async move {
        while let Ok(v) = ping_rx.recv().await {
            if pong_tx.send(v).await.is_err() {
                break;
            }
        }
    };
    (ping, pong)
}

fn check_sum(sum: u64, n: u64) -> Result<(), String> {
    let want = n * (n - 1) / 2;
    if sum == want {
        Ok(())
    } else {
        Err(format!("joined sum {sum}, expected {want}: tasks lost or wrong"))
    }
}

fn check_last(last: u64, n: u64) -> Result<(), String> {
    if last + 1 == n {
        Ok(())
    } else {
        Err(format!("ping-pong ended at {last}, expected {}", n - 1))
    }
}

/// wq-futures on a fresh runtime (all CPUs) and a bound queue.
struct WqFutures {
    wq: Workqueue,
    _rt: Runtime,
}

impl WqFutures {
    fn new() -> Result<WqFutures, String> {
        let rt = Runtime::builder().build().map_err(|e| e.to_string())?;
        let wq = rt.workqueue("bench-async").build().map_err(|e| e.to_string())?;
        Ok(WqFutures { wq, _rt: rt })
    }
}

impl AsyncPeer for WqFutures {
    fn spawn_join(&self, n: u64) -> Result<Duration, String> {
        let start = Instant::now();
        let handles: Vec<_> = (0..n).map(|i| self.wq.spawn(async move { i })).collect();
        let sum = wq_futures::block_on(async {
            let mut sum = 0;
            for h in handles {
                sum += h.await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(sum)
        })?;
        let elapsed = start.elapsed();
        check_sum(sum, n)?;
        Ok(elapsed)
    }

    fn ping_pong(&self, n: u64) -> Result<Duration, String> {
        let (ping, pong) = ping_pong_tasks(n);
        let start = Instant::now();
        let ping = self.wq.spawn(ping);
        let pong = self.wq.spawn(pong);
        let last = wq_futures::block_on(ping).map_err(|e| e.to_string())??;
        let elapsed = start.elapsed();
        wq_futures::block_on(pong).map_err(|e| e.to_string())?;
        check_last(last, n)?;
        Ok(elapsed)
    }
}

impl Drop for WqFutures {
    fn drop(&mut self) {
        let _ = self.wq.destroy();
    }
}

/// `async-executor`'s multi-threaded use: one `Executor::run` per CPU.
struct AsyncExecutor {
    ex: Arc<async_executor::Executor<'static>>,
    stop: async_channel::Sender<()>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl AsyncExecutor {
    fn new(threads: usize) -> Result<AsyncExecutor, String> {
        let ex = Arc::new(async_executor::Executor::new());
        let (stop, stop_rx) = async_channel::bounded::<()>(1);
        let threads = (0..threads)
            .map(|i| {
                let ex = Arc::clone(&ex);
                let stop_rx = stop_rx.clone();
                thread::Builder::new()
                    .name(format!("async-executor-{i}"))
                    .spawn(move || {
                        // Runs tasks until the stop channel closes.
                        let _ = futures_lite::future::block_on(ex.run(stop_rx.recv()));
                    })
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AsyncExecutor { ex, stop, threads })
    }
}

impl AsyncPeer for AsyncExecutor {
    fn spawn_join(&self, n: u64) -> Result<Duration, String> {
        let start = Instant::now();
        let tasks: Vec<_> = (0..n).map(|i| self.ex.spawn(async move { i })).collect();
        let sum = futures_lite::future::block_on(async {
            let mut sum = 0;
            for t in tasks {
                sum += t.await;
            }
            sum
        });
        let elapsed = start.elapsed();
        check_sum(sum, n)?;
        Ok(elapsed)
    }

    fn ping_pong(&self, n: u64) -> Result<Duration, String> {
        let (ping, pong) = ping_pong_tasks(n);
        let start = Instant::now();
        let ping = self.ex.spawn(ping);
        let pong = self.ex.spawn(pong);
        let last = futures_lite::future::block_on(ping)?;
        let elapsed = start.elapsed();
        futures_lite::future::block_on(pong);
        check_last(last, n)?;
        Ok(elapsed)
    }
}

impl Drop for AsyncExecutor {
    fn drop(&mut self) {
        self.stop.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// tokio's multi-thread runtime with its defaults (one worker per CPU).
struct Tokio {
    rt: tokio::runtime::Runtime,
}

impl Tokio {
    fn new() -> Result<Tokio, String> {
        let rt = tokio::runtime::Builder::new_multi_thread().build().map_err(|e| e.to_string())?;
        Ok(Tokio { rt })
    }
}

impl AsyncPeer for Tokio {
    fn spawn_join(&self, n: u64) -> Result<Duration, String> {
        let start = Instant::now();
        let handles: Vec<_> = (0..n).map(|i| self.rt.spawn(async move { i })).collect();
        let sum = self.rt.block_on(async {
            let mut sum = 0;
            for h in handles {
                sum += h.await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(sum)
        })?;
        let elapsed = start.elapsed();
        check_sum(sum, n)?;
        Ok(elapsed)
    }

    fn ping_pong(&self, n: u64) -> Result<Duration, String> {
        let (ping, pong) = ping_pong_tasks(n);
        let start = Instant::now();
        let ping = self.rt.spawn(ping);
        let pong = self.rt.spawn(pong);
        let last = self.rt.block_on(ping).map_err(|e| e.to_string())??;
        let elapsed = start.elapsed();
        self.rt.block_on(pong).map_err(|e| e.to_string())?;
        check_last(last, n)?;
        Ok(elapsed)
    }
}

type Builder = fn() -> Result<Box<dyn AsyncPeer>, String>;

fn peers() -> Vec<(&'static str, Builder)> {
    vec![
        ("wq-futures (bound queue)", || Ok(Box::new(WqFutures::new()?) as Box<dyn AsyncPeer>)),
        ("async-executor (1 run/CPU)", || Ok(Box::new(AsyncExecutor::new(cpus())?) as Box<dyn AsyncPeer>)),
        ("tokio multi-thread", || Ok(Box::new(Tokio::new()?) as Box<dyn AsyncPeer>)),
    ]
}

fn parse_rounds() -> Result<usize, String> {
    let mut rounds = DEFAULT_ROUNDS;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => {
                let v = it.next().ok_or("--rounds needs a value")?;
                rounds = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--rounds: `{v}` is not a positive number"))?;
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(rounds)
}

fn main() -> ExitCode {
    let rounds = match parse_rounds() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}\nusage: async_compare [--rounds N]");
            return ExitCode::from(2);
        }
    };
    let peers = peers();
    let mut spawn_rates: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    let mut rtt_us: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    let mut failed = false;
    let watchdog = Watchdog::start();
    for round in 0..rounds {
        // Rotate the order so no peer always runs first (cold caches) or last.
        for k in 0..peers.len() {
            let idx = (k + round) % peers.len();
            let (name, build) = peers[idx];
            eprintln!("round {}/{rounds}: {name}", round + 1);
            watchdog.step(format!("building {name}"));
            let peer = match build() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("  {name}: could not build: {e}");
                    failed = true;
                    continue;
                }
            };
            watchdog.step(format!("{name} spawn+join"));
            match peer.spawn_join(TASKS) {
                Ok(d) => spawn_rates[idx].push(TASKS as f64 / d.as_secs_f64()),
                Err(e) => {
                    eprintln!("  {name} spawn+join: {e}");
                    failed = true;
                }
            }
            watchdog.step(format!("{name} ping-pong"));
            match peer.ping_pong(ROUND_TRIPS) {
                Ok(d) => rtt_us[idx].push(d.as_secs_f64() * 1e6 / ROUND_TRIPS as f64),
                Err(e) => {
                    eprintln!("  {name} ping-pong: {e}");
                    failed = true;
                }
            }
            watchdog.step(format!("dropping {name}"));
            drop(peer);
        }
    }
    *watchdog.step.lock().unwrap_or_else(|e| e.into_inner()) = None;

    let mut t = Table::new(format!("spawn+join of {TASKS} tiny tasks"), &["executor", "tasks/s", "vs wq-futures"]);
    t.note(format!(
        "{rounds} rounds, {} CPUs; median [min–max]; tasks spawned from, and joined on, the main thread.",
        cpus()
    ));
    let reference = Spread::of(&spawn_rates[0]).map(|s| s.median).unwrap_or(f64::NAN);
    for (i, (name, _)) in peers.iter().enumerate() {
        let cells = match Spread::of(&spawn_rates[i]) {
            Some(s) => vec![name.to_string(), s.show(rate), ratio(s.median, reference)],
            None => vec![name.to_string(), "failed".into(), "–".into()],
        };
        t.row(cells);
    }
    println!("{}", t.render());

    let mut t = Table::new(
        format!("ping-pong between two tasks, {ROUND_TRIPS} round trips"),
        &["executor", "µs per round trip", "vs wq-futures"],
    );
    t.note(format!("{rounds} rounds; two async-channel channels of capacity 1; lower is better."));
    let reference = Spread::of(&rtt_us[0]).map(|s| s.median).unwrap_or(f64::NAN);
    for (i, (name, _)) in peers.iter().enumerate() {
        let cells = match Spread::of(&rtt_us[i]) {
            Some(s) => vec![name.to_string(), s.show(num), ratio(s.median, reference)],
            None => vec![name.to_string(), "failed".into(), "–".into()],
        };
        t.row(cells);
    }
    println!("{}", t.render());

    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
