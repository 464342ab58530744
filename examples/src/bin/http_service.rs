//! A small HTTP service on tokio + hyper whose handlers send their blocking work to workqueues,
//! measured against the same service on tokio's `spawn_blocking`.
//!
//! Every request to `/work` does three blocking things, each on the queue that suits it:
//! - reads a data file (`files`: an unbound queue for blocking file reads; a simulated
//!   storage latency, `--io-ms`, stands for a cold disk or a network filesystem),
//! - hashes what it read (`hashing`: an unbound `CPU_INTENSIVE` queue, so long hashes do not
//!   hold up the other items of their pool),
//! - appends a line to an access log (`log`: an ordered queue, so lines land in request
//!   order with one writer at a time and no lock contention).
//!
//! The tokio build sends all three to `tokio::task::spawn_blocking`.
//!
//! The files and hashing queues are unbound, like tokio's blocking pool. The requests arrive
//! on whichever CPU the tokio worker handling them runs on, and a bound queue would keep each
//! read and hash on that CPU even while the other one idles. With bound queues this service
//! served 0.78-0.89x tokio's requests/s at 64 connections; with unbound ones, 0.99-1.08x.
//!
//! Usage: `cargo run --release -p examples --bin http_service -- [--backend wq|tokio]
//! [--connections N] [--requests N] [--io-ms N] [--hash-rounds N]`
//!
//! Without `--backend` the program runs itself twice, once per backend, each in a fresh
//! process (so thread counts do not mix), and prints a comparison. Each run starts the server
//! on 127.0.0.1 (an ephemeral port), drives it with an in-process load generator (keep-alive
//! connections, a fixed number of requests each, a 60 s cap), and prints requests/s, latency
//! percentiles and the process's peak OS thread count.

use std::convert::Infallible;
use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use wq_core::{Flags, Workqueue};

type BoxError = Box<dyn Error + Send + Sync>;

/// Settings of one run.
#[derive(Clone, Debug)]
struct Config {
    backend: Option<Backend>,
    connections: usize,
    requests_per_connection: usize,
    io_latency: Duration,
    hash_rounds: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Wq,
    Tokio,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Wq => "wq",
            Backend::Tokio => "tokio",
        }
    }
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config {
        backend: None,
        connections: 64,
        requests_per_connection: 200,
        io_latency: Duration::from_millis(1),
        hash_rounds: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| v.parse::<usize>().map_err(|_| format!("{name}: `{v}` is not a number"));
        match a.as_str() {
            "--backend" => {
                cfg.backend = Some(match value("--backend")?.as_str() {
                    "wq" => Backend::Wq,
                    "tokio" => Backend::Tokio,
                    other => return Err(format!("--backend: `{other}` is not wq or tokio")),
                })
            }
            "--connections" => cfg.connections = number(&a, value(&a)?)?.max(1),
            "--requests" => cfg.requests_per_connection = number(&a, value(&a)?)?.max(1),
            "--io-ms" => cfg.io_latency = Duration::from_millis(number(&a, value(&a)?)? as u64),
            "--hash-rounds" => cfg.hash_rounds = number(&a, value(&a)?)?.max(1),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(cfg)
}

/// The queues of the wq build.
struct Queues {
    files: Workqueue,
    hashing: Workqueue,
    log: Workqueue,
}

impl Queues {
    fn new() -> Result<Queues, wq_core::Error> {
        Ok(Queues {
            files: Workqueue::builder("http_files").flags(Flags::UNBOUND).build()?,
            hashing: Workqueue::builder("http_hash").flags(Flags::CPU_INTENSIVE | Flags::UNBOUND).build()?,
            log: Workqueue::builder("http_log").ordered().build()?,
        })
    }
}

/// Which queue a blocking call belongs on.
#[derive(Clone, Copy)]
enum Kind {
    File,
    Hash,
}

/// Shared by every request.
struct App {
    backend: Backend,
    queues: Option<Queues>,
    data_path: PathBuf,
    log: Arc<Mutex<File>>,
    /// Numbers log lines in the order their writes are queued; held while queueing so that
    /// number order and queue order agree.
    log_seq: Mutex<u64>,
    /// The tokio build's detached log writes: a runtime that shuts down drops
    /// blocking tasks that have not started, so they are awaited before it does.
    log_writes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    requests: AtomicU64,
    io_latency: Duration,
    hash_rounds: usize,
}

impl App {
    /// Runs a blocking closure the backend's way and waits for it.
    async fn blocking<T, F>(&self, kind: Kind, f: F) -> Result<T, BoxError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match (&self.queues, self.backend) {
            (Some(q), Backend::Wq) => {
                let wq = match kind {
                    Kind::File => &q.files,
                    Kind::Hash => &q.hashing,
                };
                Ok(wq_tokio_compat::spawn_blocking_on(wq, f).await?)
            }
            _ => Ok(tokio::task::spawn_blocking(f).await?),
        }
    }

    /// Sends a log line without waiting for it. The line starts with its queueing number: the
    /// ordered queue writes lines in that order, the tokio pool in whatever order its threads
    /// win the file's lock.
    fn log_line(&self, line: String) {
        let log = Arc::clone(&self.log);
        let mut seq = self.log_seq.lock().unwrap_or_else(|e| e.into_inner());
        let n = *seq;
        *seq += 1;
        let write = move || {
            let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
            // A failed log write must not fail the request; it shows in the final check.
            let _ = writeln!(file, "{n} {line}");
        };
        match (&self.queues, self.backend) {
            (Some(q), Backend::Wq) => drop(wq_tokio_compat::spawn_blocking_on(&q.log, write)),
            _ => self.log_writes.lock().unwrap_or_else(|e| e.into_inner()).push(tokio::task::spawn_blocking(write)),
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != "/work" {
            return text(StatusCode::NOT_FOUND, "try /work\n".into());
        }
        let request = self.requests.fetch_add(1, Ordering::Relaxed);
        let path = self.data_path.clone();
        let io_latency = self.io_latency;
        let data = match self
            .blocking(Kind::File, move || {
                // Known blocking I/O says so: on a wq worker another worker
                // takes over at once (no waiting for the sleep detector);
                // on tokio's blocking threads it just runs the closure.
                wq_tokio_compat::block_in_place(|| {
                    // Stands for storage latency: a cold disk, a network filesystem.
                    thread::sleep(io_latency);
                    std::fs::read(path)
                })
            })
            .await
        {
            Ok(Ok(data)) => data,
            Ok(Err(e)) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("read: {e}\n")),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("task: {e}\n")),
        };
        let rounds = self.hash_rounds;
        let digest = match self.blocking(Kind::Hash, move || hash(&data, rounds)).await {
            Ok(d) => d,
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("task: {e}\n")),
        };
        self.log_line(format!("request={request} digest={digest:016x}"));
        text(StatusCode::OK, format!("{digest:016x}\n"))
    }
}

/// FNV-1a over `data`, `rounds` times: CPU work proportional to the input.
fn hash(data: &[u8], rounds: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..rounds {
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// Samples the process's thread count and keeps the peak.
struct ThreadPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    sampler: Option<thread::JoinHandle<()>>,
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

impl ThreadPeak {
    fn start() -> ThreadPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(thread_count()));
        let sampler = {
            let stop = Arc::clone(&stop);
            let peak = Arc::clone(&peak);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(thread_count(), Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(2));
                }
            })
        };
        ThreadPeak { stop, peak, sampler: Some(sampler) }
    }

    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        // The sampler thread itself is not part of the service.
        self.peak.load(Ordering::Relaxed).saturating_sub(1)
    }
}

/// One keep-alive client connection: `n` requests, their latencies in microseconds.
async fn client(addr: SocketAddr, n: usize, deadline: Instant) -> Result<Vec<u64>, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut latencies = Vec::with_capacity(n);
    let mut line = String::new();
    for _ in 0..n {
        if Instant::now() >= deadline {
            break;
        }
        let start = Instant::now();
        write.write_all(b"GET /work HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
        let mut content_length = None;
        let mut status_ok = false;
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                return Err("server closed the connection".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if l.starts_with("HTTP/1.1 ") {
                status_ok = l.starts_with("HTTP/1.1 200");
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = Some(v.trim().parse::<usize>()?);
                }
            }
        }
        let len = content_length.ok_or("response without content-length")?;
        let mut body = vec![0u8; len];
        read.read_exact(&mut body).await?;
        if !status_ok {
            return Err(format!("error response: {}", String::from_utf8_lossy(&body)).into());
        }
        latencies.push(start.elapsed().as_micros() as u64);
    }
    Ok(latencies)
}

/// Checks the access log: one line per request, and for the wq build (ordered queue) in
/// request order.
fn check_log(path: &Path, requests: usize) -> Result<(usize, bool), BoxError> {
    let text = std::fs::read_to_string(path)?;
    let seqs: Vec<u64> =
        text.lines().map(|l| l.split(' ').next().unwrap_or("").parse::<u64>()).collect::<Result<_, _>>()?;
    if seqs.len() != requests {
        return Err(format!("{} log lines for {requests} requests", seqs.len()).into());
    }
    // "In order": every line landed in the order its write was queued, which only the
    // ordered queue promises.
    let in_order = seqs.windows(2).filter(|w| w[1] < w[0]).count() == 0;
    Ok((seqs.len(), in_order))
}

fn run_one(backend: Backend, cfg: &Config) -> Result<(), BoxError> {
    let dir = std::env::temp_dir().join(format!("http_service_{}_{}", backend.name(), std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let data_path = dir.join("data.bin");
    std::fs::write(&data_path, (0..64 * 1024u32).map(|i| (i * 7) as u8).collect::<Vec<_>>())?;
    let log_path = dir.join("access.log");
    let log = OpenOptions::new().create(true).truncate(true).write(true).open(&log_path)?;

    let peak = ThreadPeak::start();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let queues = match backend {
        Backend::Wq => Some(Queues::new()?),
        Backend::Tokio => None,
    };
    let app = Arc::new(App {
        backend,
        queues,
        data_path,
        log: Arc::new(Mutex::new(log)),
        log_seq: Mutex::new(0),
        log_writes: Mutex::new(Vec::new()),
        requests: AtomicU64::new(0),
        io_latency: cfg.io_latency,
        hash_rounds: cfg.hash_rounds,
    });

    let (elapsed, mut latencies) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server_app = Arc::clone(&app);
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let app = Arc::clone(&server_app);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let app = Arc::clone(&app);
                        async move { Ok::<_, Infallible>(app.handle(req).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        let start = Instant::now();
        let deadline = start + Duration::from_secs(60);
        let clients: Vec<_> =
            (0..cfg.connections).map(|_| tokio::spawn(client(addr, cfg.requests_per_connection, deadline))).collect();
        let mut latencies = Vec::new();
        for c in clients {
            latencies.extend(c.await??);
        }
        let elapsed = start.elapsed();
        server.abort();
        let writes = std::mem::take(&mut *app.log_writes.lock().unwrap_or_else(|e| e.into_inner()));
        for w in writes {
            w.await?;
        }
        Ok::<_, BoxError>((elapsed, latencies))
    })?;
    // Let the detached log writes land before counting lines.
    if let Some(q) = &app.queues {
        q.log.flush()?;
    }
    drop(rt);
    let peak_threads = peak.stop();

    let requests = latencies.len();
    let (lines, in_order) = check_log(&log_path, requests)?;
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((requests as f64 - 1.0) * p) as usize];
    println!(
        "backend={} requests={} requests_per_s={:.0} p50_us={} p99_us={} peak_threads={} log_lines={} log_in_order={}",
        backend.name(),
        requests,
        requests as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        peak_threads,
        lines,
        in_order
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}\nusage: http_service [--backend wq|tokio] [--connections N] [--requests N] [--io-ms N] [--hash-rounds N]");
            return ExitCode::from(2);
        }
    };
    if let Some(backend) = cfg.backend {
        return match run_one(backend, &cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{} run failed: {e}", backend.name());
                ExitCode::FAILURE
            }
        };
    }
    // Both builds, each in its own process so thread counts and pools do not mix.
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{} connections x {} requests, {:?} simulated storage latency, {} hash rounds over 64 KiB",
        cfg.connections, cfg.requests_per_connection, cfg.io_latency, cfg.hash_rounds
    );
    let mut ok = true;
    for backend in [Backend::Wq, Backend::Tokio] {
        let status = Command::new(&exe)
            .args(["--backend", backend.name()])
            .args(["--connections", &cfg.connections.to_string()])
            .args(["--requests", &cfg.requests_per_connection.to_string()])
            .args(["--io-ms", &cfg.io_latency.as_millis().to_string()])
            .args(["--hash-rounds", &cfg.hash_rounds.to_string()])
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => {
                eprintln!("{} run exited with {s}", backend.name());
                ok = false;
            }
            Err(e) => {
                eprintln!("could not start the {} run: {e}", backend.name());
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
