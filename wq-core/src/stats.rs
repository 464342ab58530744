//! Counters and the text views: `wq_monitor.py` columns and `wq_dump.py`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::pool::Pool;
use crate::topology::format_cpu_list;
use crate::Runtime;

/// Counters of one workqueue, named after the `wq_monitor.py` columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkqueueStats {
    /// Work items that finished running (`total`).
    pub total: u64,
    /// Items queued and not yet finished, including inactive ones (`infl`).
    pub in_flight: u64,
    /// CPU time consumed by the queue's items (`CPUtime`). Tiny items that
    /// a worker runs back to back are timed together and added when the
    /// run ends, so this may briefly trail `total` by those items.
    pub cpu_time: Duration,
    /// Items that ran past the CPU-hog threshold without sleeping (`CPUhog`).
    pub cpu_hogs: u64,
    /// Times a worker was woken because one running an item of this queue
    /// slept (`CMW`, concurrency-management wake-ups).
    pub cm_wakeups: u64,
    /// Times this queue asked its rescuer for help (`mayday`).
    pub mayday: u64,
    /// Items the rescuer ran (`rescued`).
    pub rescued: u64,
    /// Items that panicked.
    pub panics: u64,
    /// Queueing attempts refused (destroyed or draining queue).
    pub refused: u64,
}

/// Counts of one worker pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// The pool's id, as `dump()` shows it.
    pub id: usize,
    /// The CPU of a bound pool; `None` for an unbound pool.
    pub cpu: Option<usize>,
    /// Whether this is a highpri pool.
    pub highpri: bool,
    /// The nice value its workers asked for.
    pub nice: i32,
    /// The nice value the OS granted; `None` if it refused (or no worker
    /// has asked yet).
    pub nice_granted: Option<i32>,
    /// Live worker threads.
    pub workers: usize,
    /// Idle workers.
    pub idle: usize,
    /// Workers counted as running (`nr_running`).
    pub running: usize,
    /// Items on the worklist, not yet started.
    pub pending: usize,
    /// Times the watchdog found the pool stalled.
    pub stalls: u64,
}

impl PoolStats {
    pub(crate) fn of(pool: &Pool) -> PoolStats {
        let snap = pool.snapshot();
        let nice_granted = match pool.nice_status() {
            Some(Ok(n)) => Some(n),
            Some(Err(())) => None,
            None if pool.attrs.nice == 0 => Some(0),
            None => None,
        };
        PoolStats {
            id: pool.id,
            cpu: pool.attrs.cpu,
            highpri: pool.attrs.highpri,
            nice: pool.attrs.nice,
            nice_granted,
            workers: snap.workers,
            idle: snap.idle,
            running: snap.running,
            pending: snap.pending,
            stalls: pool.stalls.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Counts of a whole runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Live worker threads over all pools.
    pub workers: usize,
    /// Panics of the monitor's thread (user code there, such as a `tracing`
    /// subscriber, or a bug): each was logged and the monitor started over.
    /// Anything but 0 deserves a look.
    pub monitor_panics: u64,
    /// Every pool: bound ones by CPU (normal, highpri), then unbound ones.
    pub pools: Vec<PoolStats>,
}

pub(crate) fn dump(rt: &Runtime) -> String {
    let mut out = String::new();
    let topo = rt.topology();
    let _ = writeln!(out, "CPUs: {}", format_cpu_list(topo.cpus()));
    let (detector, why) = rt.detector();
    let _ = writeln!(out, "Sleep detector: {detector} ({why})");
    let panics = rt.shared.core.monitor_panics.load(std::sync::atomic::Ordering::SeqCst);
    if panics > 0 {
        let _ = writeln!(out, "Monitor: panicked {panics} times, started over each time (see the log)");
    }
    let _ = writeln!(out, "\nWorker Pools");
    for pool in &rt.shared.pools() {
        let s = PoolStats::of(pool);
        let place = match pool.attrs.cpu {
            Some(cpu) => format!("cpu={cpu:>3}"),
            None => format!("cpus={}", format_cpu_list(&pool.attrs.cpus)),
        };
        let nice = match (pool.nice_status(), pool.attrs.nice) {
            (Some(Err(())), want) => format!("nice={want:>3} (refused by the OS, runs at 0)"),
            (Some(Ok(got)), want) if got != want => format!("nice={got:>3} (asked {want})"),
            (_, want) => format!("nice={want:>3}"),
        };
        let _ = writeln!(
            out,
            "pool[{:02}] {:<4} {place:<10} {nice} workers={:>3} idle={:>3} running={:>3} pending={}",
            s.id,
            pool.label(),
            s.workers,
            s.idle,
            s.running,
            s.pending
        );
    }
    let _ = writeln!(out, "\nBusy workers");
    for pool in &rt.shared.pools() {
        for w in pool.workers().iter().filter(|w| w.flags() & crate::worker::IDLE == 0) {
            let probe = w.probe.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|p| p.kind().to_string());
            let _ = writeln!(
                out,
                "{:<12} pool[{:02}] flags={:#04x} probe={} items={}",
                w.name,
                pool.id,
                w.flags(),
                probe.as_deref().unwrap_or("none"),
                w.items_started.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(out, "\nWorkqueue CPU -> pool");
    let _ = write!(out, "[{:>24} \\ CPU", "workqueue");
    for cpu in topo.cpus() {
        let _ = write!(out, " {cpu:>3}");
    }
    let _ = writeln!(out, " ]  flags, max_active");
    for wq in rt.workqueues() {
        let _ = write!(out, "{:<30}", wq.name());
        let set = wq.shared.set();
        for slot in 0..topo.cpus().len() {
            let _ = write!(out, " {:>3}", set.for_slot(slot).pool.id);
        }
        let flags = if wq.flags().is_empty() { "-".to_owned() } else { format!("{:?}", wq.flags()) };
        let flags = flags.trim_start_matches("Flags(").trim_end_matches(')').to_owned();
        let ordered = if wq.is_ordered() { " ordered" } else { "" };
        let _ = writeln!(out, "    {flags}{ordered}, {}", wq.max_active());
    }
    out
}
