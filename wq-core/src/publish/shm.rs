//! The snapshot file: a seqlock header and the payload, written with
//! `pwrite` and read with `pread` (the layout and protocol are described in
//! `publish.rs`), and the lock that tells a live publisher's file from an
//! abandoned one.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::Snapshot;

const MAGIC: [u8; 8] = *b"CMWQPUB\0";
const HEADER_LEN: usize = 64;
const OFF_VERSION: usize = 8;
const OFF_HEADER_LEN: usize = 12;
const OFF_SEQ: usize = 16;
const OFF_LEN: usize = 24;
const OFF_PID: usize = 32;
const OFF_RUNTIME_ID: usize = 40;
const OFF_CHECKSUM: usize = 48;
/// Refuses payloads a sane runtime never produces, so a corrupt length
/// cannot make a reader allocate gigabytes.
const MAX_PAYLOAD: usize = 64 << 20;
/// How long a reader keeps retrying a snapshot that is always mid-update.
const READ_PATIENCE: Duration = Duration::from_millis(500);

/// FNV-1a 64 of the payload: the header's checksum.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn put(header: &mut [u8; HEADER_LEN], off: usize, bytes: &[u8]) {
    header[off..off + bytes.len()].copy_from_slice(bytes);
}

fn u32_at(header: &[u8; HEADER_LEN], off: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&header[off..off + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(header: &[u8; HEADER_LEN], off: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&header[off..off + 8]);
    u64::from_le_bytes(b)
}

/// The writing side of one snapshot file. Its descriptor holds a shared
/// `flock` on the file for the writer's life: that is what tells readers
/// the publisher is alive, whatever its pid means to them.
pub(super) struct Writer {
    file: File,
    pid: u32,
    runtime_id: u64,
    /// The last even value of the sequence counter written.
    seq: u64,
}

/// Grows `file` to `len` bytes with every block allocated. Done before the
/// counter goes odd, so on a full filesystem (a small tmpfs) the write fails
/// with `ENOSPC` while the file still holds the last whole snapshot, where a
/// `pwrite` running out of room would leave it mid-update for good. glibc
/// emulates the call where the filesystem has no `fallocate`.
fn allocate(file: &File, len: usize) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `posix_fallocate` only reads its arguments; the descriptor is
    // `file`'s, open for writing, and lives across the call.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// `flock(file, op)`; `Ok(false)` when `op` has `LOCK_NB` and another open
/// file holds a conflicting lock.
fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: `flock` only reads its arguments and touches no memory of
        // ours; the descriptor is `file`'s and stays open across the call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

impl Writer {
    /// Creates `<dir>/<pid>.<runtime_id>` holding `first`. The file is built
    /// and locked under a hidden name and renamed into place, so a reader
    /// never finds it without a complete snapshot or without its lock.
    pub(super) fn create(dir: &Path, pid: u32, runtime_id: u64, first: &[u8]) -> io::Result<(Writer, PathBuf)> {
        let path = dir.join(format!("{pid}.{runtime_id}"));
        let tmp = dir.join(format!(".{pid}.{runtime_id}.tmp"));
        // A leftover of an earlier process that had our pid.
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        let mut writer = Writer { file, pid, runtime_id, seq: 0 };
        let built = (|| {
            // The umask may have taken bits off; readers need exactly 0600.
            writer.file.set_permissions(fs::Permissions::from_mode(0o600))?;
            flock(&writer.file, libc::LOCK_SH)?;
            writer.write(first)?;
            fs::rename(&tmp, &path)
        })();
        if let Err(err) = built {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        Ok((writer, path))
    }

    /// The whole header, so a file truncated under the writer is whole
    /// again after its next write.
    fn header(&self, seq: u64, payload: &[u8]) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        put(&mut h, 0, &MAGIC);
        put(&mut h, OFF_VERSION, &Snapshot::FORMAT_VERSION.to_le_bytes());
        put(&mut h, OFF_HEADER_LEN, &(HEADER_LEN as u32).to_le_bytes());
        put(&mut h, OFF_SEQ, &seq.to_le_bytes());
        put(&mut h, OFF_LEN, &(payload.len() as u64).to_le_bytes());
        put(&mut h, OFF_PID, &self.pid.to_le_bytes());
        put(&mut h, OFF_RUNTIME_ID, &self.runtime_id.to_le_bytes());
        put(&mut h, OFF_CHECKSUM, &checksum(payload).to_le_bytes());
        h
    }

    /// Replaces the payload under the seqlock.
    pub(super) fn write(&mut self, payload: &[u8]) -> io::Result<()> {
        let end = HEADER_LEN + payload.len();
        // Checked every time: someone may have truncated the file.
        if self.file.metadata()?.len() < end as u64 {
            allocate(&self.file, end)?;
        }
        let odd = self.seq + 1;
        self.file.write_all_at(&odd.to_le_bytes(), OFF_SEQ as u64)?;
        self.file.write_all_at(payload, HEADER_LEN as u64)?;
        self.file.write_all_at(&self.header(odd, payload), 0)?;
        self.seq += 2;
        self.file.write_all_at(&self.seq.to_le_bytes(), OFF_SEQ as u64)
    }
}

fn check_header(header: &[u8; HEADER_LEN], path: &Path) -> io::Result<()> {
    if header[..MAGIC.len()] != MAGIC {
        return Err(invalid(format!("{} is not a wq snapshot file (bad magic)", path.display())));
    }
    let version = u32_at(header, OFF_VERSION);
    if version != Snapshot::FORMAT_VERSION {
        return Err(invalid(format!(
            "{} was written in snapshot format {version}; this reader knows format {} (a different wq-core version)",
            path.display(),
            Snapshot::FORMAT_VERSION
        )));
    }
    let header_len = u32_at(header, OFF_HEADER_LEN);
    if header_len as usize != HEADER_LEN {
        return Err(invalid(format!("{}: unexpected header length {header_len}", path.display())));
    }
    Ok(())
}

/// What one attempt to read the payload gave.
enum Attempt {
    Payload(Vec<u8>),
    /// The writer is mid-update, or moved on while we read.
    Busy,
    /// The counter stayed at `seq`, yet the header and payload disagree: a
    /// torn read if the counter moves on, a corrupt file if it does not.
    Suspect {
        seq: u64,
        problem: String,
    },
}

/// `read_exact_at`, with running into the end of the file (it was cut
/// short, perhaps while we read) as `Ok(false)`.
fn read_all_at(file: &File, buf: &mut [u8], off: usize) -> io::Result<bool> {
    match file.read_exact_at(buf, off as u64) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(err) => Err(err),
    }
}

fn too_short(path: &Path, size: u64) -> io::Error {
    invalid(format!("{} is too short to be a wq snapshot ({size} bytes)", path.display()))
}

fn attempt(file: &File, path: &Path) -> io::Result<Attempt> {
    let size = file.metadata()?.len();
    let mut header = [0; HEADER_LEN];
    if !read_all_at(file, &mut header, 0)? {
        return Err(too_short(path, file.metadata()?.len()));
    }
    check_header(&header, path)?;
    let seq = u64_at(&header, OFF_SEQ);
    if seq & 1 == 1 {
        return Ok(Attempt::Busy);
    }
    let declared = u64_at(&header, OFF_LEN);
    let fits = usize::try_from(declared).ok().filter(|&len| len <= MAX_PAYLOAD && (HEADER_LEN + len) as u64 <= size);
    let mut payload = None;
    if let Some(len) = fits {
        let mut buf = vec![0; len];
        if read_all_at(file, &mut buf, HEADER_LEN)? {
            payload = Some(buf);
        }
    }
    let mut again = [0; 8];
    if !read_all_at(file, &mut again, OFF_SEQ)? {
        return Err(too_short(path, file.metadata()?.len()));
    }
    if u64::from_le_bytes(again) != seq {
        return Ok(Attempt::Busy);
    }
    Ok(match payload {
        Some(payload) if checksum(&payload) == u64_at(&header, OFF_CHECKSUM) => Attempt::Payload(payload),
        Some(_) => Attempt::Suspect { seq, problem: "the payload does not match the header's checksum".into() },
        None => Attempt::Suspect {
            seq,
            problem: format!(
                "the header declares a {declared}-byte payload but the file holds {} bytes",
                file.metadata()?.len()
            ),
        },
    })
}

/// Opens `path` for reading, refusing anything but a regular file.
/// O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
fn open_regular(path: &Path) -> io::Result<File> {
    let file =
        OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(invalid(format!("{} is not a regular file", path.display())));
    }
    Ok(file)
}

/// The payload of the snapshot file at `path`, read under the seqlock.
pub(super) fn read_payload(path: &Path) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let deadline = Instant::now() + READ_PATIENCE;
    let mut attempts = 0u32;
    let mut suspect = None;
    loop {
        match attempt(&file, path)? {
            Attempt::Payload(payload) => return Ok(payload),
            // The writer changes the counter before anything else, so the
            // same disagreement under the same counter twice is no torn read.
            Attempt::Suspect { seq, problem } if suspect == Some(seq) => {
                return Err(invalid(format!("{}: {problem}", path.display())));
            }
            Attempt::Suspect { seq, .. } => suspect = Some(seq),
            Attempt::Busy => suspect = None,
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{}: the snapshot stayed mid-update (did its process die while writing?)", path.display()),
            ));
        }
        attempts += 1;
        if attempts > 3 {
            thread::sleep(Duration::from_millis(1));
        } else {
            thread::yield_now();
        }
    }
}

/// Whether a live writer holds the file at `path` (see `PublishedFile::is_held`).
pub(super) fn is_held(path: &Path) -> io::Result<bool> {
    // A lock we take goes with `file`, at the end of this call.
    Ok(!flock(&open_regular(path)?, libc::LOCK_EX | libc::LOCK_NB)?)
}

/// Removes the file at `path` unless a live writer holds it (see
/// `PublishedFile::remove_if_abandoned`).
pub(super) fn remove_if_abandoned(path: &Path) -> io::Result<bool> {
    let file = match open_regular(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    if !flock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
        return Ok(false);
    }
    // Between our open and our lock, the file may have been removed and a
    // new publisher's renamed into its place: that one is not ours to judge.
    let locked = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(now) if (now.dev(), now.ino()) == (locked.dev(), locked.ino()) => {}
        Ok(_) => return Ok(false),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
