//! The snapshot payload: what a runtime publishes and how it is encoded.

use std::io;
use std::time::Duration;

use crate::{Flags, PoolStats, RuntimeStats, WorkqueueStats};

/// One published snapshot of a runtime: what `wq dump` and `wq monitor` show.
///
/// ```
/// use std::time::Duration;
/// use wq_core::{PublishedFile, Runtime, Snapshot};
///
/// // A runtime publishes itself when built, then every 100 ms.
/// let rt = Runtime::builder().cpus([0]).build()?;
/// let wq = rt.workqueue("published").build()?;
/// wq.submit(|| ())?.wait().unwrap();
///
/// // What `wq dump` reads: find our own file and read it; the new queue
/// // appears at the next publication.
/// let me = std::process::id();
/// let file = PublishedFile::list().into_iter().find(|f| f.pid == me).expect("published");
/// let mut snap: Snapshot = file.read()?;
/// for _ in 0..250 {
///     if snap.queues.iter().any(|q| q.name == "published" && q.stats.total == 1) {
///         break;
///     }
///     std::thread::sleep(Duration::from_millis(20));
///     snap = file.read()?;
/// }
/// assert_eq!(snap.pid, me);
/// assert_eq!(snap.queues[0].name, "published");
/// assert_eq!(snap.queues[0].stats.total, 1);
/// assert!(snap.dump.contains("published"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The publishing process.
    pub pid: u32,
    /// Which runtime of that process (1 for the first one built).
    pub runtime_id: u64,
    /// The process's start time (clock ticks after boot, field 22 of
    /// `/proc/<pid>/stat`): tells the publisher from a later process that
    /// reuses its pid. 0 if it could not be read.
    pub start_time: u64,
    /// How many snapshots the runtime has published, this one included.
    pub generation: u64,
    /// When this snapshot was taken, in milliseconds since the Unix epoch.
    pub published_unix_ms: u64,
    /// The sleep detector in use (`perf`, `procfs` or `explicit-only`).
    pub detector: String,
    /// The `wq_dump` view: [`Runtime::dump`](crate::Runtime::dump).
    pub dump: String,
    /// Worker and pool counts: [`Runtime::stats`](crate::Runtime::stats).
    pub runtime: RuntimeStats,
    /// Every live workqueue of the runtime, in creation order.
    pub queues: Vec<QueueSnapshot>,
}

/// The counters of one workqueue in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// The queue's name.
    pub name: String,
    /// The queue's flags.
    pub flags: Flags,
    /// The `wq_monitor` counters.
    pub stats: WorkqueueStats,
}

impl Snapshot {
    /// The version of the file and payload layout this crate writes and reads.
    pub const FORMAT_VERSION: u32 = 3;

    /// The payload bytes of the snapshot file (without the seqlock header).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc(Vec::with_capacity(256 + self.dump.len() + 96 * self.queues.len()));
        e.u32(Snapshot::FORMAT_VERSION);
        e.u32(self.pid);
        e.u64(self.runtime_id);
        e.u64(self.start_time);
        e.u64(self.generation);
        e.u64(self.published_unix_ms);
        e.str(&self.detector);
        e.str(&self.dump);
        e.u64(self.runtime.workers as u64);
        e.u64(self.runtime.monitor_panics);
        e.u32(self.runtime.pools.len() as u32);
        for p in &self.runtime.pools {
            e.u64(p.id as u64);
            e.u64(p.cpu.map_or(u64::MAX, |c| c as u64));
            e.u8(u8::from(p.highpri));
            e.i32(p.nice);
            e.u8(u8::from(p.nice_granted.is_some()));
            e.i32(p.nice_granted.unwrap_or(0));
            for n in [p.workers, p.idle, p.running, p.pending] {
                e.u64(n as u64);
            }
            e.u64(p.stalls);
        }
        e.u32(self.queues.len() as u32);
        for q in &self.queues {
            let s = &q.stats;
            e.str(&q.name);
            e.u32(q.flags.bits());
            e.u64(s.total);
            e.u64(s.in_flight);
            e.u64(u64::try_from(s.cpu_time.as_nanos()).unwrap_or(u64::MAX));
            for n in [s.cpu_hogs, s.cm_wakeups, s.mayday, s.rescued, s.panics, s.refused] {
                e.u64(n);
            }
        }
        e.0
    }

    /// Parses a payload made by [`Snapshot::encode`].
    ///
    /// # Errors
    /// `InvalidData`, saying what is wrong and where, for another format
    /// version, truncated or trailing bytes, bad UTF-8 or out-of-range values.
    pub fn decode(bytes: &[u8]) -> io::Result<Snapshot> {
        let mut d = Dec { buf: bytes, pos: 0 };
        let version = d.u32("format version")?;
        if version != Snapshot::FORMAT_VERSION {
            return Err(invalid(format!(
                "format version {version}, but this reader knows version {}",
                Snapshot::FORMAT_VERSION
            )));
        }
        let pid = d.u32("pid")?;
        let runtime_id = d.u64("runtime id")?;
        let start_time = d.u64("start time")?;
        let generation = d.u64("generation")?;
        let published_unix_ms = d.u64("publication time")?;
        let detector = d.str("detector")?;
        let dump = d.str("dump")?;
        let workers = d.usize("worker count")?;
        let monitor_panics = d.u64("monitor panics")?;
        let nr_pools = d.u32("pool count")?;
        let mut pools = Vec::new();
        for _ in 0..nr_pools {
            let id = d.usize("pool id")?;
            let cpu = match d.u64("pool cpu")? {
                u64::MAX => None,
                c => Some(usize::try_from(c).map_err(|_| invalid(format!("pool cpu {c} is out of range")))?),
            };
            let highpri = d.bool("pool highpri")?;
            let nice = d.i32("pool nice")?;
            let granted = d.bool("pool nice granted")?;
            let granted_value = d.i32("pool nice granted")?;
            pools.push(PoolStats {
                id,
                cpu,
                highpri,
                nice,
                nice_granted: granted.then_some(granted_value),
                workers: d.usize("pool workers")?,
                idle: d.usize("pool idle")?,
                running: d.usize("pool running")?,
                pending: d.usize("pool pending")?,
                stalls: d.u64("pool stalls")?,
            });
        }
        let nr_queues = d.u32("queue count")?;
        let mut queues = Vec::new();
        for _ in 0..nr_queues {
            let name = d.str("queue name")?;
            let flags = Flags::from_bits_retain(d.u32("queue flags")?);
            let stats = WorkqueueStats {
                total: d.u64("total")?,
                in_flight: d.u64("in_flight")?,
                cpu_time: Duration::from_nanos(d.u64("cpu_time")?),
                cpu_hogs: d.u64("cpu_hogs")?,
                cm_wakeups: d.u64("cm_wakeups")?,
                mayday: d.u64("mayday")?,
                rescued: d.u64("rescued")?,
                panics: d.u64("panics")?,
                refused: d.u64("refused")?,
            };
            queues.push(QueueSnapshot { name, flags, stats });
        }
        if d.pos != bytes.len() {
            return Err(invalid(format!("{} trailing bytes after the snapshot", bytes.len() - d.pos)));
        }
        Ok(Snapshot {
            pid,
            runtime_id,
            start_time,
            generation,
            published_unix_ms,
            detector,
            dump,
            runtime: RuntimeStats { workers, monitor_panics, pools },
            queues,
        })
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        // A string over 4 GiB cannot occur (names are capped, dumps are small);
        // truncating keeps the length prefix honest if it ever did.
        self.0.extend_from_slice(&s.as_bytes()[..s.len().min(u32::MAX as usize)]);
    }
}

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Dec<'_> {
    fn take(&mut self, n: usize, what: &str) -> io::Result<&[u8]> {
        let end =
            self.pos.checked_add(n).filter(|&end| end <= self.buf.len()).ok_or_else(|| {
                invalid(format!("truncated at byte {} while reading the {what} ({n} bytes)", self.pos))
            })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
    fn array<const N: usize>(&mut self, what: &str) -> io::Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    fn u32(&mut self, what: &str) -> io::Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }
    fn i32(&mut self, what: &str) -> io::Result<i32> {
        self.array(what).map(i32::from_le_bytes)
    }
    fn u64(&mut self, what: &str) -> io::Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }
    fn usize(&mut self, what: &str) -> io::Result<usize> {
        let v = self.u64(what)?;
        usize::try_from(v).map_err(|_| invalid(format!("the {what} {v} is out of range")))
    }
    fn bool(&mut self, what: &str) -> io::Result<bool> {
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(invalid(format!("the {what} flag is {b}, not 0 or 1"))),
        }
    }
    fn str(&mut self, what: &str) -> io::Result<String> {
        let len = self.u32(what)? as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid(format!("the {what} is not UTF-8")))
    }
}
