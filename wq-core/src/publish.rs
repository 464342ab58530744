//! Live monitoring from outside the process: each runtime publishes its
//! counters into a small file that the `wq` tool reads.
//!
//! Where: `$XDG_RUNTIME_DIR/cmwq/<pid>.<runtime-id>`, or
//! `<temp dir>/cmwq-<euid>/` when that is unset or unusable. The directory
//! is `0700` and the file `0600`: the counters, queue names and dump text
//! are the process's business. The file is written once at start and then
//! every [`INTERVAL`] by the runtime's manager (a periodic job on the
//! monitor's thread, so publishing costs no thread); it is removed when the runtime is dropped. Nothing is installed to run at exit, so a crashed
//! process leaves its file behind; readers recognise it and may delete it
//! (with [`PublishedFile::remove_if_abandoned`]).
//!
//! A file is abandoned when its pid is gone (or belongs to a process with
//! another start time) *and* nobody holds its lock: the writer takes a
//! shared `flock` on the file, on its hidden name before renaming it into
//! place so no reader ever finds it unlocked, and holds it for as long as
//! it publishes. The pid alone would do within one pid namespace, but a
//! process in another one (a container) sharing the directory publishes
//! under a pid that means nothing here, and its live file would be deleted.
//! The one known limit: an `flock` belongs to the open file description,
//! which a `fork` child shares, so the file of a process that forked stays
//! held until the child exits (or execs), even if the parent crashed first.
//!
//! The file is a 64-byte header followed by the payload, [`Snapshot::encode`]:
//!
//! | offset | field                                      |
//! |-------:|--------------------------------------------|
//! | 0      | magic `CMWQPUB\0`                          |
//! | 8      | format version (u32, [`Snapshot::FORMAT_VERSION`]) |
//! | 12     | header length (u32, 64)                    |
//! | 16     | sequence counter (u64, the seqlock)        |
//! | 24     | payload length (u64)                       |
//! | 32     | pid (u32)                                  |
//! | 40     | runtime id (u64)                           |
//! | 48     | checksum (u64, FNV-1a 64 of the payload)   |
//! | 64     | payload                                    |
//!
//! All integers are little-endian. The file is written with `pwrite` and
//! read with `pread`, never mapped: anyone who can write the file can
//! truncate it, and touching a mapped page past the end of a file raises
//! SIGBUS, which would kill the publishing process (and a reader). The
//! seqlock: the writer makes the counter odd, writes the payload, then the
//! whole header with the payload's length and checksum, then makes the
//! counter even; a reader reads the header, the payload and the counter
//! again, and retries unless both counter reads were the same even value
//! and the payload matches the checksum. The checksum catches a torn read
//! whatever order the kernel makes one system call's writes visible to
//! another's reads in; the same mismatch under the same even counter twice
//! is a corrupt file, not a race, and is reported as one. A truncated file
//! reads as an `InvalidData` error until the writer's next write, which
//! writes the header whole and so repairs it.
//!
//! The publisher holds only a `Weak` to the runtime, so publishing never
//! keeps a runtime alive.

mod format;
mod shm;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use format::{QueueSnapshot, Snapshot};

use crate::runtime::{Periodic, Runtime};
use shm::Writer;

/// How often the publisher rewrites the snapshot.
pub(crate) const INTERVAL: Duration = Duration::from_millis(100);

/// Runtime ids are per process: the n-th runtime that started publishing.
static NEXT_RUNTIME_ID: AtomicU64 = AtomicU64::new(1);

/// A published snapshot file, as found by [`PublishedFile::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedFile {
    /// Where the file is.
    pub path: PathBuf,
    /// The publishing process, from the file name.
    pub pid: u32,
    /// The runtime within that process, from the file name.
    pub runtime_id: u64,
}

impl PublishedFile {
    /// The directories runtimes publish in, the preferred one first:
    /// `$XDG_RUNTIME_DIR/cmwq` (if that variable holds an absolute path),
    /// then `<temp dir>/cmwq-<euid>`.
    pub fn dirs() -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            if xdg.is_absolute() {
                dirs.push(xdg.join("cmwq"));
            }
        }
        dirs.push(std::env::temp_dir().join(format!("cmwq-{}", euid())));
        dirs
    }

    /// Every snapshot file in [`PublishedFile::dirs`], ordered by pid then
    /// runtime id. Missing or unreadable directories count as empty, and so
    /// does one that is not a directory of ours (a symlink, or another
    /// user's: in a shared temp dir anyone can make `cmwq-<our uid>`, and a
    /// tool deleting stale files there would delete files of their
    /// choosing); a listed file may still belong to a process that has
    /// exited (see [`PublishedFile::remove_if_abandoned`]).
    pub fn list() -> Vec<PublishedFile> {
        let mut found = Vec::new();
        for dir in PublishedFile::dirs() {
            if !is_our_dir(&dir) {
                continue;
            }
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if let Some((pid, runtime_id)) = name.to_str().and_then(parse_file_name) {
                    found.push(PublishedFile { path: entry.path(), pid, runtime_id });
                }
            }
        }
        found.sort_by(|a, b| (a.pid, a.runtime_id, &a.path).cmp(&(b.pid, b.runtime_id, &b.path)));
        found.dedup_by(|a, b| a.path == b.path);
        found
    }

    /// Reads the snapshot, retrying while the publisher is mid-update.
    ///
    /// # Errors
    /// The file cannot be opened or read, is not a snapshot file (or was
    /// truncated), has an unknown format version, holds a payload that does
    /// not match its checksum, or stays mid-update for half a second (a
    /// publisher that died while writing).
    pub fn read(&self) -> io::Result<Snapshot> {
        Snapshot::read(&self.path)
    }

    /// Whether a live publisher holds the file: the lock its writer takes
    /// says it is alive even where its pid means nothing (a process in
    /// another pid namespace), and is released when the process exits,
    /// however it ends. A `fork` child of the publisher holds it too, until
    /// it exits or execs.
    ///
    /// # Errors
    /// The file cannot be opened, or is not a regular file (a symlink is not
    /// followed).
    pub fn is_held(&self) -> io::Result<bool> {
        shm::is_held(&self.path)
    }

    /// Removes the file if no live publisher holds it (see
    /// [`PublishedFile::is_held`]); `Ok(true)` if it was removed. Meant for
    /// files whose pid says their process is gone: a held one belongs to a
    /// live process in another pid namespace, and is left. `Ok(false)` too
    /// if the file is already gone, or if the path came to name another
    /// file meanwhile (a new publisher's: not ours to judge).
    ///
    /// # Errors
    /// The file cannot be opened or removed, or is not a regular file.
    pub fn remove_if_abandoned(&self) -> io::Result<bool> {
        shm::remove_if_abandoned(&self.path)
    }
}

/// `<pid>.<runtime-id>`, both decimal.
fn parse_file_name(name: &str) -> Option<(u32, u64)> {
    let (pid, id) = name.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(id) {
        return None;
    }
    Some((pid.parse().ok()?, id.parse().ok()?))
}

impl Snapshot {
    /// Takes a snapshot of `rt` now.
    pub(crate) fn capture(rt: &Runtime, runtime_id: u64, start_time: u64, generation: u64) -> Snapshot {
        let published_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let queues = rt
            .workqueues()
            .iter()
            .map(|wq| QueueSnapshot { name: wq.name().to_owned(), flags: wq.flags(), stats: wq.stats() })
            .collect();
        Snapshot {
            pid: std::process::id(),
            runtime_id,
            start_time,
            generation,
            published_unix_ms,
            detector: rt.detector().0.to_string(),
            dump: rt.dump(),
            runtime: rt.stats(),
            queues,
        }
    }

    /// Reads the snapshot file at `path` (see [`PublishedFile::read`]).
    ///
    /// # Errors
    /// As [`PublishedFile::read`].
    pub fn read(path: &Path) -> io::Result<Snapshot> {
        let payload = shm::read_payload(path)?;
        Snapshot::decode(&payload).map_err(|err| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: corrupt snapshot: {err}", path.display()))
        })
    }

    /// Whether the process that published this snapshot is still running:
    /// its pid exists and has the same start time (so it was not reused).
    /// Only meaningful within the publisher's pid namespace: `false` for a
    /// live process in another one, which [`PublishedFile::is_held`] tells.
    pub fn is_from_live_process(&self) -> bool {
        match process_start_time(self.pid) {
            Ok(now) => self.start_time == 0 || now == self.start_time,
            Err(_) => false,
        }
    }
}

/// Stops a runtime's publisher and removes its file when dropped.
pub(crate) struct PublishHandle {
    path: PathBuf,
    /// Shared with the periodic job, which stops once it finds `None`.
    writer: Arc<Mutex<Option<Writer>>>,
}

impl PublishHandle {
    /// The published file.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PublishHandle {
    fn drop(&mut self) {
        // Taking the writer waits for a write in progress, so nothing is
        // written after the file is gone. (The job may itself drop the
        // runtime, and so this handle, when its short-lived strong reference
        // was the last one: it holds no lock then.)
        lock_writer(&self.writer).take();
        let _ = fs::remove_file(&self.path);
    }
}

fn lock_writer(w: &Mutex<Option<Writer>>) -> MutexGuard<'_, Option<Writer>> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts publishing `rt` in the first usable directory of
/// [`PublishedFile::dirs`]; the first snapshot is written before this returns.
pub(crate) fn start(rt: &Runtime) -> io::Result<PublishHandle> {
    let mut failures = Vec::new();
    for dir in PublishedFile::dirs() {
        let started = ensure_dir(&dir).and_then(|()| {
            sweep_once(&dir);
            start_in(rt, &dir)
        });
        match started {
            Ok(handle) => return Ok(handle),
            Err(err) => failures.push(format!("{}: {err}", dir.display())),
        }
    }
    Err(io::Error::other(format!("cannot publish runtime counters ({})", failures.join("; "))))
}

/// Starts publishing `rt` in `dir`, which must exist.
pub(crate) fn start_in(rt: &Runtime, dir: &Path) -> io::Result<PublishHandle> {
    let runtime_id = NEXT_RUNTIME_ID.fetch_add(1, Ordering::Relaxed);
    let start_time = own_start_time();
    let first = Snapshot::capture(rt, runtime_id, start_time, 1);
    let (writer, path) = Writer::create(dir, std::process::id(), runtime_id, &first.encode())?;
    let writer = Arc::new(Mutex::new(Some(writer)));
    let weak = Arc::downgrade(&rt.shared);
    let job_writer = writer.clone();
    let mut generation = 1;
    let job = move || {
        let Some(shared) = weak.upgrade() else { return false };
        generation += 1;
        // The strong reference lives only for this statement.
        let snapshot = Snapshot::capture(&Runtime { shared }, runtime_id, start_time, generation);
        let mut slot = lock_writer(&job_writer);
        let Some(writer) = slot.as_mut() else { return false };
        if let Err(err) = writer.write(&snapshot.encode()) {
            tracing::warn!(target: "wq", %err, "stopped publishing runtime counters");
            *slot = None;
            return false;
        }
        true
    };
    rt.shared.core.manager.add_periodic(Periodic { every: INTERVAL, job: Box::new(job) });
    Ok(PublishHandle { path, writer })
}

/// Once per process, removes the abandoned files (their pid gone and their
/// lock free) from `dir` (ours: it is a 0700 directory of ours), so files
/// left by crashed processes, or by ones that never dropped their runtime,
/// do not pile up between runs of `wq list`.
fn sweep_once(dir: &Path) {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| sweep(dir));
}

fn sweep(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let published = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")).unwrap_or(name);
        if let Some((pid, _)) = parse_file_name(published) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = shm::remove_if_abandoned(&entry.path());
            }
        }
    }
}

/// Whether `dir` itself (not a symlink to one) is a directory owned by us:
/// what `ensure_dir` makes sure of before publishing there.
fn is_our_dir(dir: &Path) -> bool {
    fs::symlink_metadata(dir).is_ok_and(|meta| meta.is_dir() && meta.uid() == euid())
}

/// Creates `dir` (mode 0700) if needed, and refuses one that is not a
/// directory of ours: in a shared temp dir another user could have made it
/// to read our counters.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!("{} is not a directory", dir.display())));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} belongs to uid {}, not to us (uid {me})", dir.display(), meta.uid()),
        ));
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: `geteuid` has no preconditions, cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// This process's start time, read once.
fn own_start_time() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    *START.get_or_init(|| process_start_time(std::process::id()).unwrap_or(0))
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks after boot.
fn process_start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no start time in /proc/{pid}/stat")))
}

#[cfg(test)]
mod tests;
