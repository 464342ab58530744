//! The text `wq` prints: the dump, the monitor table, the process list.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wq_core::{QueueSnapshot, Snapshot};

use crate::target::Published;

/// The `wq dump` view: each runtime's published dump text.
pub fn render_dump(pid: u32, name: &str, runtimes: &[Published]) -> String {
    let mut out = String::new();
    for (i, rt) in runtimes.iter().enumerate() {
        let s = &rt.snapshot;
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "== pid {pid} ({name}), runtime {}, {} ==", s.runtime_id, age(s));
        out.push_str(&s.dump);
        if !s.dump.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// How long ago `s` was published, as "updated 0.1 s ago".
fn age(s: &Snapshot) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let ms = now.saturating_sub(s.published_unix_ms);
    format!("updated {:.1} s ago", ms as f64 / 1000.0)
}

/// One refresh of `wq monitor`: the snapshots of a process's runtimes.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The snapshots, one per runtime.
    pub runtimes: Vec<Snapshot>,
}

/// The `wq monitor` view (the `wq_monitor.py` columns): per queue the
/// counters of `cur`, and what changed since `prev` (the rates per interval).
///
/// `+total` is the items finished since the previous refresh and `CPU%` the
/// CPU time the queue's items used over that time; both show `-` on the
/// first refresh, or when the runtime published nothing new in between.
pub fn render_monitor(pid: u32, name: &str, prev: Option<&Sample>, cur: &Sample) -> String {
    let mut out = String::new();
    for s in &cur.runtimes {
        let before = prev.and_then(|p| p.runtimes.iter().find(|r| r.runtime_id == s.runtime_id));
        let elapsed_ms = before.map_or(0, |b| s.published_unix_ms.saturating_sub(b.published_unix_ms));
        let _ = writeln!(
            out,
            "pid {pid} ({name})  runtime {}  detector {}  workers {}{}  {}",
            s.runtime_id,
            s.detector,
            s.runtime.workers,
            match s.runtime.monitor_panics {
                0 => String::new(),
                n => format!("  monitor panicked {n}x"),
            },
            age(s)
        );
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>8} {:>6} {:>10} {:>6} {:>7} {:>7} {:>7} {:>8}",
            "queue", "total", "+total", "infl", "CPUtime", "CPU%", "CPUhog", "CMW", "mayday", "rescued"
        );
        for (i, q) in s.queues.iter().enumerate() {
            let old = before.and_then(|b| same_queue(b, s, i)).filter(|_| elapsed_ms > 0);
            let done = old.map_or("-".to_owned(), |o| q.stats.total.saturating_sub(o.stats.total).to_string());
            let cpu = old.map_or("-".to_owned(), |o| {
                let used = q.stats.cpu_time.saturating_sub(o.stats.cpu_time);
                format!("{:.1}", 100.0 * used.as_secs_f64() / Duration::from_millis(elapsed_ms).as_secs_f64())
            });
            let s = &q.stats;
            let _ = writeln!(
                out,
                "{:<24} {:>10} {:>8} {:>6} {:>10.3} {:>6} {:>7} {:>7} {:>7} {:>8}",
                q.name,
                s.total,
                done,
                s.in_flight,
                s.cpu_time.as_secs_f64(),
                cpu,
                s.cpu_hogs,
                s.cm_wakeups,
                s.mayday,
                s.rescued
            );
        }
        if s.queues.is_empty() {
            out.push_str("(no workqueues)\n");
        }
    }
    out
}

/// The queue of `before` that is the `i`-th queue of `now`: same name and
/// same rank among queues of that name (names need not be unique).
fn same_queue<'a>(before: &'a Snapshot, now: &Snapshot, i: usize) -> Option<&'a QueueSnapshot> {
    let name = &now.queues[i].name;
    let rank = now.queues[..i].iter().filter(|q| &q.name == name).count();
    before.queues.iter().filter(|q| &q.name == name).nth(rank)
}

/// The `wq list` view.
pub fn render_list(rows: &[(String, &Published)]) -> String {
    let mut out = format!(
        "{:>8} {:>4}  {:<16} {:>6} {:>7}  {:<13} {}\n",
        "PID", "RT", "COMMAND", "QUEUES", "WORKERS", "DETECTOR", "UPDATED"
    );
    for (name, p) in rows {
        let s = &p.snapshot;
        let _ = writeln!(
            out,
            "{:>8} {:>4}  {:<16} {:>6} {:>7}  {:<13} {}",
            s.pid,
            s.runtime_id,
            name,
            s.queues.len(),
            s.runtime.workers,
            s.detector,
            age(s).trim_start_matches("updated ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wq_core::{Flags, RuntimeStats, WorkqueueStats};

    fn snap(at_ms: u64, queues: &[(&str, u64, u64)]) -> Snapshot {
        Snapshot {
            pid: 7,
            runtime_id: 1,
            start_time: 1,
            generation: 1,
            published_unix_ms: at_ms,
            detector: "procfs".into(),
            dump: "dump text".into(),
            runtime: RuntimeStats { workers: 4, monitor_panics: 0, pools: vec![] },
            queues: queues
                .iter()
                .map(|&(name, total, cpu_ms)| QueueSnapshot {
                    name: name.into(),
                    flags: Flags::empty(),
                    stats: WorkqueueStats {
                        total,
                        cpu_time: Duration::from_millis(cpu_ms),
                        ..WorkqueueStats::default()
                    },
                })
                .collect(),
        }
    }

    fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in\n{table}"))
            .split_whitespace()
            .collect()
    }

    #[test]
    fn monitor_shows_counters_and_rates() {
        let first = Sample { runtimes: vec![snap(10_000, &[("io", 10, 100), ("dup", 1, 0), ("dup", 5, 0)])] };
        let table = render_monitor(7, "demo", None, &first);
        assert!(table.contains("pid 7 (demo)  runtime 1  detector procfs  workers 4"), "{table}");
        assert_eq!(row(&table, "io")[1..3], ["10", "-"]);
        // One second later: 15 more items and 500 ms of CPU, so 50 %.
        let second = Sample { runtimes: vec![snap(11_000, &[("io", 25, 600), ("dup", 3, 0), ("dup", 9, 0)])] };
        let table = render_monitor(7, "demo", Some(&first), &second);
        let io = row(&table, "io");
        assert_eq!((io[1], io[2], io[4], io[5]), ("25", "15", "0.600", "50.0"), "{table}");
        let dups: Vec<&str> =
            table.lines().filter(|l| l.starts_with("dup")).map(|l| l.split_whitespace().nth(2).unwrap()).collect();
        assert_eq!(dups, ["2", "4"], "queues of the same name pair up by rank");
        // Nothing new published: no rate rather than a division by zero.
        let table = render_monitor(7, "demo", Some(&second), &second);
        assert_eq!(row(&table, "io")[2], "-");
    }

    #[test]
    fn dump_prints_each_runtime() {
        let file = wq_core::PublishedFile { path: "/x/7.1".into(), pid: 7, runtime_id: 1 };
        let published = [Published { file, snapshot: snap(0, &[]) }];
        let out = render_dump(7, "demo", &published);
        assert!(out.starts_with("== pid 7 (demo), runtime 1, updated "), "{out}");
        assert!(out.ends_with("dump text\n"));
    }
}
