//! The snapshot file: a seqlock header and the payload, in a shared mapping
//! (the layout and protocol are described in `publish.rs`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};
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
/// Refuses payloads a sane runtime never produces, so a corrupt length
/// cannot make a reader allocate gigabytes.
const MAX_PAYLOAD: usize = 64 << 20;
/// How long a reader keeps retrying a snapshot that is always mid-update.
const READ_PATIENCE: Duration = Duration::from_millis(500);

/// A shared mapping of a snapshot file. Every access to the mapped bytes,
/// in this process or another, goes through atomics, so a concurrent
/// writer is a race only in the seqlock's sense, never a data race.
struct Map {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Map` owns its mapping (unmapped only in `drop`), and all access to
// the mapped bytes is through atomics, so it may move to and be shared with
// other threads.
unsafe impl Send for Map {}

impl Map {
    fn new(file: &File, len: usize, writable: bool) -> io::Result<Map> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a new shared mapping of an open file with no address hint, so
        // the kernel picks a range that overlaps nothing of ours; MAP_FAILED is
        // checked below and `len` is non-zero (callers map at least the header).
        let addr = unsafe { libc::mmap(ptr::null_mut(), len, prot, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Map { ptr, len })
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.len, "u64 at {off} outside the {}-byte mapping", self.len);
        // SAFETY: in bounds (asserted), 8-aligned (the mapping is page-aligned and
        // `off` a multiple of 8), alive for as long as `&self`, and only ever
        // accessed atomically.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off % 4 == 0 && off + 4 <= self.len, "u32 at {off} outside the {}-byte mapping", self.len);
        // SAFETY: as in `u64_at`, with 4-byte alignment.
        unsafe { &*self.ptr.as_ptr().add(off).cast::<AtomicU32>() }
    }

    /// `n` 8-byte words from `off`: the payload is copied a word at a time,
    /// and only ever accessed as whole words, never mixed with byte accesses.
    fn words(&self, off: usize, n: usize) -> &[AtomicU64] {
        assert!(
            off % 8 == 0 && n.checked_mul(8).and_then(|b| b.checked_add(off)).is_some_and(|end| end <= self.len),
            "words {off}+{n}*8 outside the mapping"
        );
        // SAFETY: in bounds and 8-aligned (asserted; the mapping is
        // page-aligned), the mapping lives as long as `&self`, and all access
        // is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off).cast::<AtomicU64>(), n) }
    }

    fn bytes(&self, off: usize, len: usize) -> &[AtomicU8] {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.len), "bytes {off}+{len} outside the mapping");
        // SAFETY: in bounds (asserted), `AtomicU8` has the size and alignment of
        // `u8`, the mapping lives as long as `&self`, and all access is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off).cast::<AtomicU8>(), len) }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what `mmap` returned, and no
        // reference into the mapping outlives the `&self` borrows that made it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn check_header(map: &Map, path: &Path) -> io::Result<()> {
    let magic: Vec<u8> = map.bytes(0, MAGIC.len()).iter().map(|b| b.load(Ordering::Relaxed)).collect();
    if magic != MAGIC {
        return Err(invalid(format!("{} is not a wq snapshot file (bad magic)", path.display())));
    }
    let version = u32::from_le(map.u32_at(OFF_VERSION).load(Ordering::Relaxed));
    if version != Snapshot::FORMAT_VERSION {
        return Err(invalid(format!(
            "{} was written in snapshot format {version}; this reader knows format {} (a different wq-core version)",
            path.display(),
            Snapshot::FORMAT_VERSION
        )));
    }
    let header_len = u32::from_le(map.u32_at(OFF_HEADER_LEN).load(Ordering::Relaxed));
    if header_len as usize != HEADER_LEN {
        return Err(invalid(format!("{}: unexpected header length {header_len}", path.display())));
    }
    Ok(())
}

/// What one attempt to copy the payload gave.
enum Copied {
    Payload(Vec<u8>),
    /// The writer kept changing it.
    Busy,
    /// The header, read consistently, declares a payload longer than this
    /// mapping: the file grew since it was mapped, or is corrupt.
    Beyond(u64),
}

fn read_consistent(map: &Map) -> Copied {
    let seq = map.u64_at(OFF_SEQ);
    for _ in 0..64 {
        // Relaxed, then a fence: the mapping is read-only, and only relaxed
        // atomic loads of read-only memory are allowed (std's "Atomic
        // accesses to read-only memory"); the fence gives the same order.
        let before = seq.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if before & 1 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let declared = u64::from_le(map.u64_at(OFF_LEN).load(Ordering::Relaxed));
        let fits =
            usize::try_from(declared).ok().filter(|&l| l <= MAX_PAYLOAD && HEADER_LEN + l.div_ceil(8) * 8 <= map.len);
        let Some(len) = fits else {
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) == before {
                return Copied::Beyond(declared);
            }
            continue;
        };
        let words = len.div_ceil(8);
        let mut payload: Vec<u8> = Vec::with_capacity(8 * words);
        for word in map.words(HEADER_LEN, words) {
            payload.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        payload.truncate(len);
        // Orders the payload loads before the re-check (Boehm's seqlock reader).
        fence(Ordering::Acquire);
        if seq.load(Ordering::Relaxed) == before {
            return Copied::Payload(payload);
        }
    }
    Copied::Busy
}

/// The writing side of one snapshot file.
pub(super) struct Writer {
    file: File,
    map: Map,
    seq: u64,
}

fn capacity_for(needed: usize) -> usize {
    needed.next_power_of_two().max(4096)
}

/// Sizes `file` to `len` bytes with every block allocated. `set_len` alone
/// makes a sparse file: on a full filesystem (a small tmpfs) the first
/// store into a page it cannot back raises SIGBUS and kills the process,
/// where allocating first gives a clean `ENOSPC`. glibc emulates the call
/// where the filesystem has no `fallocate`.
fn allocate(file: &File, len: usize) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `posix_fallocate` only reads its arguments; the descriptor is
    // `file`'s, open for writing, and lives across the call.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

impl Writer {
    /// Creates `<dir>/<pid>.<runtime_id>` holding `first`. The file is built
    /// under a hidden name and renamed into place, so a reader never finds
    /// it without a complete snapshot.
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
        let built = (|| {
            // The umask may have taken bits off; readers need exactly 0600.
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            let cap = capacity_for(HEADER_LEN + first.len());
            allocate(&file, cap)?;
            let map = Map::new(&file, cap, true)?;
            for (dst, &b) in map.bytes(0, MAGIC.len()).iter().zip(&MAGIC) {
                dst.store(b, Ordering::Relaxed);
            }
            map.u32_at(OFF_VERSION).store(Snapshot::FORMAT_VERSION.to_le(), Ordering::Relaxed);
            map.u32_at(OFF_HEADER_LEN).store((HEADER_LEN as u32).to_le(), Ordering::Relaxed);
            map.u32_at(OFF_PID).store(pid.to_le(), Ordering::Relaxed);
            map.u64_at(OFF_RUNTIME_ID).store(runtime_id.to_le(), Ordering::Relaxed);
            Ok::<Map, io::Error>(map)
        })();
        let map = match built {
            Ok(map) => map,
            Err(err) => {
                let _ = fs::remove_file(&tmp);
                return Err(err);
            }
        };
        let mut writer = Writer { file, map, seq: 0 };
        if let Err(err) = writer.write(first).and_then(|()| fs::rename(&tmp, &path)) {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        Ok((writer, path))
    }

    /// Replaces the payload under the seqlock.
    pub(super) fn write(&mut self, payload: &[u8]) -> io::Result<()> {
        let words = payload.len().div_ceil(8);
        let needed = HEADER_LEN + 8 * words;
        if needed > self.map.len {
            // Grow, never shrink: readers may still map the old length.
            let cap = capacity_for(needed);
            allocate(&self.file, cap)?;
            self.map = Map::new(&self.file, cap, true)?;
        }
        let seq = self.map.u64_at(OFF_SEQ);
        seq.store((self.seq + 1).to_le(), Ordering::Relaxed);
        // Orders the odd counter before the payload stores (Boehm's seqlock writer).
        fence(Ordering::Release);
        for (dst, chunk) in self.map.words(HEADER_LEN, words).iter().zip(payload.chunks(8)) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            dst.store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        self.map.u64_at(OFF_LEN).store((payload.len() as u64).to_le(), Ordering::Relaxed);
        self.seq += 2;
        seq.store(self.seq.to_le(), Ordering::Release);
        Ok(())
    }
}

/// The payload of the snapshot file at `path`, copied under the seqlock.
pub(super) fn read_payload(path: &Path) -> io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer; the check below then refuses it (and anything not a file).
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    let deadline = Instant::now() + READ_PATIENCE;
    let mut attempts = 0u32;
    let mut beyond = None;
    loop {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(invalid(format!("{} is not a regular file", path.display())));
        }
        let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        if size < HEADER_LEN {
            return Err(invalid(format!("{} is too short to be a wq snapshot ({size} bytes)", path.display())));
        }
        let map = Map::new(&file, size, false)?;
        check_header(&map, path)?;
        match read_consistent(&map) {
            Copied::Payload(payload) => return Ok(payload),
            // The writer grows the file before it publishes a longer payload,
            // so a fresh mapping that is still too short means corruption.
            Copied::Beyond(len) if beyond == Some(len) => {
                return Err(invalid(format!(
                    "{}: the header declares a {len}-byte payload but the file holds {} bytes",
                    path.display(),
                    size
                )));
            }
            Copied::Beyond(len) => beyond = Some(len),
            Copied::Busy => beyond = None,
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

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
