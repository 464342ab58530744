//! Operating-system measurements the scenarios need: thread CPU time, `getrusage`, the process's
//! OS thread count, CPU pinning and a monotonic nanosecond clock shared by every thread.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process, on the monotonic clock.
///
/// Stamps taken on different threads are comparable, which is what submit-to-start latency needs.
pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    // u64 nanoseconds cover 584 years, so the cast cannot truncate in practice.
    epoch.elapsed().as_nanos() as u64
}

/// Number of CPUs this process may run on (at least 1).
pub fn cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU time consumed so far by the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    // The thread CPU clock exists on every Linux since 2.6.12; a failure would be an ABI break,
    // and reporting zero makes `burn_cpu` fall back to never finishing, so fail loudly instead.
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Spins until the calling thread has consumed `d` of CPU time.
///
/// Burning thread CPU time rather than wall time means an item that is preempted does not finish
/// early: the burn always costs the CPU what it says.
pub fn burn_cpu(d: Duration) {
    let start = thread_cpu_time();
    while thread_cpu_time().saturating_sub(start) < d {
        std::hint::spin_loop();
    }
}

/// Context switches and CPU time from `getrusage`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rusage {
    /// Voluntary context switches (the thread blocked).
    pub voluntary: u64,
    /// Involuntary context switches (the thread was preempted).
    pub involuntary: u64,
    /// User plus system CPU time.
    pub cpu: Duration,
}

impl Rusage {
    /// Usage of the whole process, including threads that have exited.
    pub fn process() -> Rusage {
        Self::get(libc::RUSAGE_SELF)
    }

    /// Usage of the calling thread only.
    pub fn thread() -> Rusage {
        Self::get(libc::RUSAGE_THREAD)
    }

    fn get(who: libc::c_int) -> Rusage {
        // SAFETY: rusage is plain old data; all-zero is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage that outlives the call.
        let rc = unsafe { libc::getrusage(who, &mut ru) };
        assert_eq!(rc, 0, "getrusage failed for a valid `who`");
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1_000);
        Rusage {
            voluntary: ru.ru_nvcsw as u64,
            involuntary: ru.ru_nivcsw as u64,
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        }
    }

    /// `self - earlier`, saturating at zero field by field.
    pub fn since(self, earlier: Rusage) -> Rusage {
        Rusage {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
            cpu: self.cpu.saturating_sub(earlier.cpu),
        }
    }
}

/// Reads the `Threads:` line of `/proc/self/status`, keeping the file open between reads.
pub struct ThreadCounter {
    file: File,
    buf: String,
}

impl ThreadCounter {
    /// Opens `/proc/self/stat`. (`/proc/self/status` has the same count, but generating it took
    /// twice as long here: 9.5 against 4.6 µs, a thousand times per second of a mixed run.)
    pub fn open() -> io::Result<ThreadCounter> {
        Ok(ThreadCounter { file: File::open("/proc/self/stat")?, buf: String::with_capacity(512) })
    }

    /// The number of OS threads in the process right now.
    pub fn read(&mut self) -> io::Result<usize> {
        // procfs regenerates the file on every read from offset 0, so re-reading an open file
        // is cheaper than reopening it each sample.
        self.file.seek(SeekFrom::Start(0))?;
        self.buf.clear();
        self.file.read_to_string(&mut self.buf)?;
        stat_threads(&self.buf)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no thread count in /proc/self/stat"))
    }
}

/// Field `n` of a `/proc/<pid>/stat` line, numbered from 1 as proc(5) does, for `n` ≥ 3. The
/// command name (field 2) is in parentheses and may hold spaces and parentheses itself, so
/// fields are counted from the last `)`, after which field 3 comes.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(n.checked_sub(3)?)
}

/// `num_threads`, field 20 of a `/proc/<pid>/stat` line.
fn stat_threads(stat: &str) -> Option<usize> {
    stat_field(stat, 20)?.parse().ok()
}

/// The machine's CPU time counters from `/proc/stat`'s `cpu` line: how a
/// run shared the host. On a VM, `steal` is time the hypervisor gave this
/// machine's CPUs to someone else; a run with much of it is noise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostTicks {
    /// Every tick of every CPU (user, nice, system, idle, iowait, irq, softirq, steal).
    pub total: u64,
    /// Ticks stolen by the hypervisor.
    pub steal: u64,
}

impl HostTicks {
    /// Reads `/proc/stat` now.
    pub fn now() -> io::Result<HostTicks> {
        HostTicks::parse(&std::fs::read_to_string("/proc/stat")?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat has no readable cpu line"))
    }

    /// The counters of a `/proc/stat` text (its first line, `cpu  user nice system idle …`).
    pub fn parse(stat: &str) -> Option<HostTicks> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let first = fields.get(..8)?;
        Some(HostTicks { total: first.iter().sum(), steal: first[7] })
    }

    /// The share of CPU time stolen since `earlier`, in percent.
    pub fn steal_percent_since(self, earlier: HostTicks) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.steal.saturating_sub(earlier.steal) as f64 / total as f64
    }
}

/// The number of OS threads in the process right now.
pub fn os_threads() -> io::Result<usize> {
    ThreadCounter::open()?.read()
}

/// Waits until the process has at most `target` threads or `timeout` passes; returns the count.
///
/// Pools that were dropped (rayon) or go idle (smol's `blocking`) retire their threads
/// asynchronously; waiting for them keeps one peer's leftovers out of the next peer's numbers.
pub fn settle_threads(target: usize, timeout: Duration) -> io::Result<usize> {
    let mut counter = ThreadCounter::open()?;
    let deadline = Instant::now() + timeout;
    loop {
        let n = counter.read()?;
        if n <= target || Instant::now() >= deadline {
            return Ok(n);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Samples the process's OS thread count on a background thread and keeps the peak.
pub struct ThreadSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicUsize>,
    handle: JoinHandle<io::Result<(usize, Rusage)>>,
}

/// What a [`ThreadSampler`] saw.
#[derive(Clone, Copy, Debug)]
pub struct SamplerReport {
    /// Highest `Threads:` value seen, the sampler thread itself included.
    pub peak: usize,
    /// Number of samples taken.
    pub samples: usize,
    /// The sampler thread's own usage, to subtract from process-wide deltas.
    pub own_usage: Rusage,
}

impl ThreadSampler {
    /// Starts sampling every `interval`.
    pub fn start(interval: Duration) -> io::Result<ThreadSampler> {
        let mut counter = ThreadCounter::open()?;
        let first = counter.read()?;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicUsize::new(first));
        let (stop2, peak2) = (stop.clone(), peak.clone());
        let handle = thread::Builder::new().name("bench-sampler".into()).spawn(move || {
            let start = Rusage::thread();
            let mut samples = 0usize;
            while !stop2.load(Ordering::Acquire) {
                let n = counter.read()?;
                peak2.fetch_max(n, Ordering::Relaxed);
                samples += 1;
                thread::sleep(interval);
            }
            Ok((samples, Rusage::thread().since(start)))
        })?;
        Ok(ThreadSampler { stop, peak, handle })
    }

    /// Takes one sample from the calling thread now, for a moment the periodic samples might
    /// miss (a run shorter than the interval).
    pub fn sample_now(&self) -> io::Result<()> {
        let n = os_threads()?;
        self.peak.fetch_max(n, Ordering::Relaxed);
        Ok(())
    }

    /// Stops the sampler and returns what it saw.
    pub fn stop(self) -> io::Result<SamplerReport> {
        self.stop.store(true, Ordering::Release);
        let (samples, own_usage) = self.handle.join().map_err(|_| io::Error::other("thread sampler panicked"))??;
        Ok(SamplerReport { peak: self.peak.load(Ordering::Relaxed), samples, own_usage })
    }
}

/// One thread of this process as `/proc/self/task` shows it.
#[derive(Clone, Debug)]
pub struct Task {
    /// Kernel thread id.
    pub tid: i32,
    /// Thread name (`comm`, at most 15 bytes).
    pub name: String,
    /// Its context switches and CPU time so far (CPU time in clock ticks' resolution).
    pub usage: Rusage,
}

/// The calling thread's kernel thread id.
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Every thread of this process with its usage. Threads that exit while being read are skipped.
pub fn tasks() -> io::Result<Vec<Task>> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let dir = entry.path();
        let (Ok(status), Ok(stat)) =
            (std::fs::read_to_string(dir.join("status")), std::fs::read_to_string(dir.join("stat")))
        else {
            continue;
        };
        if let Some(task) = parse_task(tid, &status, &stat, ticks) {
            out.push(task);
        }
    }
    Ok(out)
}

fn parse_task(tid: i32, status: &str, stat: &str, ticks: u64) -> Option<Task> {
    let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string());
    let name = field("Name:")?;
    let voluntary = field("voluntary_ctxt_switches:")?.parse().ok()?;
    let involuntary = field("nonvoluntary_ctxt_switches:")?.parse().ok()?;
    let utime: u64 = stat_field(stat, 14)?.parse().ok()?;
    let stime: u64 = stat_field(stat, 15)?.parse().ok()?;
    let t = utime + stime;
    Some(Task {
        tid,
        name,
        usage: Rusage {
            voluntary,
            involuntary,
            cpu: Duration::from_secs(t / ticks) + Duration::from_nanos((t % ticks) * 1_000_000_000 / ticks),
        },
    })
}

/// The threads of the process that do not belong to the peer under test, snapshotted before a
/// run so their number and activity during it can be told apart from the peer's.
///
/// A thread belongs to the peer when its name starts with one of the peer's prefixes. Names are
/// judged at [`Foreign::finish`], not at the snapshot: a thread names itself once it starts
/// running, which on a busy machine can be after the snapshot.
#[derive(Clone, Debug)]
pub struct Foreign {
    tasks: Vec<Task>,
    prefixes: Vec<String>,
    me: i32,
}

/// What the foreign threads of a run amounted to.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForeignUsage {
    /// Threads present at the snapshot that are not the peer's, the caller included.
    pub threads: usize,
    /// Their usage since the snapshot, the caller excluded (threads that exited meanwhile are
    /// missed: the kernel folds their counts into the process totals).
    pub usage: Rusage,
}

impl Foreign {
    /// Snapshots every thread; `own_prefixes` name the peer's.
    pub fn snapshot(own_prefixes: &[&str]) -> io::Result<Foreign> {
        Ok(Foreign {
            tasks: tasks()?,
            prefixes: own_prefixes.iter().map(|p| p.to_string()).collect(),
            me: current_tid(),
        })
    }

    /// Counts the snapshot's foreign threads and sums their usage since the snapshot.
    pub fn finish(&self) -> io::Result<ForeignUsage> {
        let now = tasks()?;
        let mut out = ForeignUsage::default();
        for before in &self.tasks {
            let after = now.iter().find(|t| t.tid == before.tid);
            let name = after.map_or(&before.name, |t| &t.name);
            if self.prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                continue;
            }
            out.threads += 1;
            if let Some(after) = after.filter(|_| before.tid != self.me) {
                let d = after.usage.since(before.usage);
                out.usage.voluntary += d.voluntary;
                out.usage.involuntary += d.involuntary;
                out.usage.cpu += d.cpu;
            }
        }
        Ok(out)
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("cpu {cpu} is out of range")));
    }
    // SAFETY: cpu_set_t is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE was checked above, so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ticks_parse_the_cpu_line_and_give_the_steal_share() {
        let stat = "cpu  100 0 50 800 10 5 5 30 0 0\ncpu0 50 0 25 400 5 2 3 15 0 0\n";
        let t = HostTicks::parse(stat).unwrap();
        assert_eq!(t, HostTicks { total: 1000, steal: 30 });
        let later = HostTicks { total: 1400, steal: 50 };
        assert!((later.steal_percent_since(t) - 5.0).abs() < 1e-9);
        assert_eq!(t.steal_percent_since(t), 0.0);
        assert_eq!(HostTicks::parse("intr 1 2 3\n"), None);
        assert_eq!(HostTicks::parse("cpu  1 2 3\n"), None, "too few fields");
        assert!(HostTicks::now().is_ok());
    }

    #[test]
    fn burn_consumes_thread_cpu_time() {
        let before = thread_cpu_time();
        burn_cpu(Duration::from_millis(20));
        assert!(thread_cpu_time() - before >= Duration::from_millis(20));
    }

    #[test]
    fn thread_count_sees_new_threads() {
        // Other tests run concurrently, so only a lower bound is reliable: eight parked threads
        // plus this one must all be counted while they are alive.
        let gate = Arc::new(std::sync::Barrier::new(9));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let g = gate.clone();
                thread::spawn(move || {
                    g.wait();
                    g.wait();
                })
            })
            .collect();
        gate.wait();
        let seen = os_threads().unwrap();
        gate.wait();
        for h in handles {
            h.join().unwrap();
        }
        assert!(seen >= 9, "saw {seen} threads");
    }

    #[test]
    fn sampler_reports_a_peak_and_samples() {
        let s = ThreadSampler::start(Duration::from_millis(1)).unwrap();
        thread::sleep(Duration::from_millis(20));
        let r = s.stop().unwrap();
        assert!(r.peak >= 2, "main and sampler threads at least");
        assert!(r.samples >= 1);
    }

    #[test]
    fn tasks_include_a_named_thread() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        // std names a thread from inside it as it starts, so wait until it is running.
        let h = thread::Builder::new()
            .name("bench-probe-7".into())
            .spawn(move || {
                ready_tx.send(()).ok();
                rx.recv().ok()
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let all = tasks().unwrap();
        assert!(all.iter().any(|t| t.name == "bench-probe-7"));
        assert!(all.iter().any(|t| t.tid == current_tid()));
        // Everything but the probe is foreign; the probe is the caller's peer. Other tests'
        // threads start and end between two readings, so the counts are compared until two
        // readings agree (a probe counted as foreign never would).
        let agrees = (0..50).any(|_| {
            let before = tasks().unwrap().len();
            let foreign = Foreign::snapshot(&["bench-probe"]).unwrap().finish().unwrap();
            foreign.threads == before - 1 && tasks().unwrap().len() == before
        });
        assert!(agrees, "the probe was counted as foreign, or the thread count never held still");
        tx.send(()).unwrap();
        h.join().unwrap();
    }

    #[test]
    fn task_stat_parsing_survives_odd_names() {
        let status = "Name:\tx) y\nvoluntary_ctxt_switches:\t5\nnonvoluntary_ctxt_switches:\t2\n";
        let stat = "12 (x) y) S 1 1 1 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 1 0";
        let t = parse_task(12, status, stat, 100).unwrap();
        assert_eq!(t.name, "x) y");
        assert_eq!((t.usage.voluntary, t.usage.involuntary), (5, 2));
        assert_eq!(t.usage.cpu, Duration::from_secs(2));
    }

    #[test]
    fn stat_thread_count_survives_odd_names() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 23 0 99 1 2";
        assert_eq!(stat_threads(line), Some(23));
        assert_eq!(stat_threads("4242 (cut"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let from_status: usize =
            status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()).unwrap();
        // Test threads come and go; both readings are of this process, a moment apart.
        assert!(stat_threads(&own).is_some_and(|n| n >= 1 && n.abs_diff(from_status) < 64), "{own}");
    }

    #[test]
    fn pinning_rejects_out_of_range_cpu() {
        assert!(pin_current_thread(usize::MAX).is_err());
    }

    #[test]
    fn rusage_since_saturates() {
        let a = Rusage { voluntary: 1, involuntary: 1, cpu: Duration::from_millis(1) };
        let b = Rusage { voluntary: 5, ..a };
        assert_eq!(a.since(b).voluntary, 0);
        assert_eq!(b.since(a).voluntary, 4);
    }
}
