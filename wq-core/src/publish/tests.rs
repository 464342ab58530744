use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::shm::Writer;
use super::*;
use crate::{Flags, PoolStats, RuntimeStats, WorkqueueStats};

/// A private directory under the temp dir, removed when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wq-publish-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sample(generation: u64, dump_len: usize) -> Snapshot {
    let pool = |id, cpu, granted| PoolStats {
        id,
        cpu,
        highpri: cpu.is_none(),
        nice: -20,
        nice_granted: granted,
        workers: 3,
        idle: 1,
        running: 2,
        pending: 7,
        stalls: 1,
    };
    let stats = WorkqueueStats {
        total: generation,
        in_flight: generation,
        cpu_time: Duration::new(generation, 123),
        cpu_hogs: generation,
        cm_wakeups: generation,
        mayday: generation,
        rescued: generation,
        panics: generation,
        refused: generation,
    };
    Snapshot {
        pid: 4242,
        runtime_id: 3,
        start_time: 99,
        generation,
        published_unix_ms: 1_700_000_000_000,
        detector: "perf".into(),
        dump: char::from(b'a' + (generation % 26) as u8).to_string().repeat(dump_len),
        runtime: RuntimeStats {
            workers: 6,
            monitor_panics: 1,
            pools: vec![pool(0, Some(1), Some(-20)), pool(1, None, None)],
        },
        queues: vec![
            QueueSnapshot { name: "alpha".into(), flags: Flags::HIGHPRI | Flags::UNBOUND, stats },
            QueueSnapshot { name: "βeta".into(), flags: Flags::empty(), stats },
        ],
    }
}

/// Whether every field that carries the generation agrees with it.
fn consistent(s: &Snapshot) -> bool {
    let ch = char::from(b'a' + (s.generation % 26) as u8);
    s.dump.chars().all(|c| c == ch)
        && s.queues.iter().all(|q| q.stats.total == s.generation && q.stats.rescued == s.generation)
}

#[test]
fn encode_decode_round_trip() {
    let snap = sample(17, 300);
    assert_eq!(Snapshot::decode(&snap.encode()).unwrap(), snap);
    let empty = Snapshot {
        queues: vec![],
        runtime: RuntimeStats { workers: 0, monitor_panics: 0, pools: vec![] },
        ..sample(1, 0)
    };
    assert_eq!(Snapshot::decode(&empty.encode()).unwrap(), empty);
}

#[test]
fn decode_rejects_bad_input_with_clear_errors() {
    let bytes = sample(5, 10).encode();
    for cut in 0..bytes.len() {
        let err = Snapshot::decode(&bytes[..cut]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(Snapshot::decode(&long).unwrap_err().to_string().contains("trailing"));
    let mut other_version = bytes.clone();
    other_version[0] = 9;
    assert!(Snapshot::decode(&other_version).unwrap_err().to_string().contains("format version 9"));
    // The detector string starts after version, pid and four u64s: length 4, then "perf".
    let mut bad_utf8 = bytes;
    bad_utf8[4 + 4 + 32 + 4] = 0xff;
    assert!(Snapshot::decode(&bad_utf8).unwrap_err().to_string().contains("not UTF-8"));
}

#[test]
fn file_names_are_pid_dot_runtime_id() {
    assert_eq!(parse_file_name("123.4"), Some((123, 4)));
    for bad in ["123", ".123.4.tmp", "a.1", "1.2.3", "1.", ".1", "99999999999.1", "+1.2"] {
        assert_eq!(parse_file_name(bad), None, "{bad}");
    }
}

#[test]
fn files_of_exited_processes_are_swept() {
    let dir = TestDir::new("sweep");
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let dead = pid_max + 1;
    let me = std::process::id();
    let names = [format!("{dead}.1"), format!(".{dead}.2.tmp"), format!("{me}.7"), "notes.txt".into()];
    for name in &names {
        fs::write(dir.0.join(name), b"").unwrap();
    }
    sweep(&dir.0);
    let mut left: Vec<String> =
        fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, [format!("{me}.7"), "notes.txt".into()]);
}

/// FNV-1a 64, written from its definition to check the documented layout.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    h
}

/// A header declaring a `len`-byte payload with checksum `sum`.
fn header(seq: u64, len: u64, sum: u64) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..8].copy_from_slice(b"CMWQPUB\0");
    h[8..12].copy_from_slice(&Snapshot::FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&64u32.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&len.to_le_bytes());
    h[48..56].copy_from_slice(&sum.to_le_bytes());
    h
}

/// A whole file holding `payload` under counter `seq`.
fn file_with(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut file = header(seq, payload.len() as u64, fnv1a(payload));
    file.extend_from_slice(payload);
    file
}

#[test]
fn fnv1a_is_the_published_function() {
    // The reference values of the FNV test suite.
    assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
    assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
}

#[test]
fn a_file_written_by_the_documented_layout_reads_back() {
    let dir = TestDir::new("layout");
    let file = file_with(2, &sample(8, 40).encode());
    let path = dir.0.join("1.1");
    fs::write(&path, file).unwrap();
    assert_eq!(Snapshot::read(&path).unwrap(), sample(8, 40));
}

#[test]
fn reading_a_bad_file_is_a_clear_error() {
    let dir = TestDir::new("bad");
    let read = |name: &str, bytes: Vec<u8>| {
        let path = dir.0.join(name);
        fs::write(&path, bytes).unwrap();
        Snapshot::read(&path).unwrap_err()
    };
    assert!(read("short", vec![0; 10]).to_string().contains("too short"));
    assert!(read("magic", vec![0; 64]).to_string().contains("bad magic"));
    let mut future = file_with(2, &[]);
    future[8] = 7;
    assert!(read("version", future).to_string().contains("format 7"));
    assert!(read("corrupt", file_with(2, &[1, 2, 3])).to_string().contains("corrupt snapshot"));
    let mut cut = header(2, 4000, 0);
    cut.extend_from_slice(&[0; 64]);
    assert!(read("cut", cut).to_string().contains("declares a 4000-byte payload but the file holds 128 bytes"));
    assert!(read("huge", header(2, u64::MAX, 0)).to_string().contains("payload"));
    // A writer that died mid-update leaves the counter odd forever.
    let stuck = read("stuck", file_with(3, &[]));
    assert_eq!(stuck.kind(), io::ErrorKind::TimedOut);
    assert!(stuck.to_string().contains("mid-update"), "{stuck}");
    assert_eq!(Snapshot::read(&dir.0.join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
}

/// A reader racing a writer that rewrites (and grows) the file as fast as
/// it can must only ever decode whole snapshots.
#[test]
fn readers_never_see_a_torn_snapshot() {
    let dir = TestDir::new("seqlock");
    let (mut writer, path) = Writer::create(&dir.0, 1, 1, &sample(0, 10).encode()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut generation = 0u64;
            while !stop.load(Ordering::Relaxed) {
                generation += 1;
                // Sizes cycle from tiny to ~40 KB, so the file grows several times.
                let len = 10 + (generation % 100) as usize * 400;
                writer.write(&sample(generation, len).encode()).unwrap();
                // The real publisher pauses 100 ms; a reader racing a writer
                // that never pauses could starve.
                thread::sleep(Duration::from_micros(50));
            }
            generation
        })
    };
    // Enough reads, while the writer visibly moves on, to overlap many writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut reads, mut changes, mut last) = (0u64, 0u64, 0u64);
    while reads < 1000 || changes < 50 {
        assert!(Instant::now() < deadline, "only {reads} reads and {changes} new generations in 30 s");
        let snap = Snapshot::read(&path).unwrap();
        assert!(consistent(&snap), "torn snapshot at generation {}", snap.generation);
        assert!(snap.generation >= last, "generations went back: {last} then {}", snap.generation);
        changes += u64::from(snap.generation != last);
        last = snap.generation;
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(writes.join().unwrap() >= last);
}

#[test]
fn directories_are_private_and_ours() {
    let base = TestDir::new("dirs");
    let fresh = base.0.join("cmwq");
    ensure_dir(&fresh).unwrap();
    assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o755)).unwrap();
    ensure_dir(&fresh).unwrap();
    assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700, "an open mode is tightened");
    let file = base.0.join("plain");
    fs::write(&file, b"").unwrap();
    assert!(ensure_dir(&file).unwrap_err().to_string().contains("not a directory"));
    let link = base.0.join("link");
    std::os::unix::fs::symlink(&fresh, &link).unwrap();
    assert!(ensure_dir(&link).is_err(), "a symlink is refused");
    if euid() == 0 {
        // Only root can hand a directory to another user.
        let theirs = base.0.join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let err = ensure_dir(&theirs).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }
}

/// Polls `path` until `ok` holds for a snapshot read from it (2 s at most).
fn read_until(path: &Path, ok: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let snap = Snapshot::read(path).unwrap();
        if ok(&snap) {
            return snap;
        }
        assert!(Instant::now() < deadline, "the published snapshot never matched; last: {snap:#?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_runtime_publishes_its_queues_and_stops_when_dropped() {
    let dir = TestDir::new("runtime");
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let handle = start_in(&rt, &dir.0).unwrap();
    let path = handle.path().to_owned();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), euid());
    let (pid, runtime_id) = parse_file_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
    assert_eq!(pid, std::process::id());

    let alpha = rt.workqueue("alpha").build().unwrap();
    let beta = rt.workqueue("beta").flags(Flags::UNBOUND).build().unwrap();
    for _ in 0..5 {
        alpha.submit(|| ()).unwrap().wait().unwrap();
    }
    beta.submit(|| ()).unwrap().wait().unwrap();
    let totals =
        |s: &Snapshot| -> Vec<(String, u64)> { s.queues.iter().map(|q| (q.name.clone(), q.stats.total)).collect() };
    let want = vec![("alpha".to_owned(), 5), ("beta".to_owned(), 1)];
    let snap = read_until(&path, |s| totals(s) == want);
    assert_eq!((snap.pid, snap.runtime_id), (pid, runtime_id));
    assert!(snap.generation > 1, "the manager republished");
    assert!(snap.dump.contains("alpha") && snap.dump.contains("beta"), "{}", snap.dump);
    assert_eq!(snap.runtime.pools.len(), rt.stats().pools.len());
    assert_eq!(snap.detector, rt.detector().0.to_string());
    assert!(snap.is_from_live_process());
    assert!(!Snapshot { pid: snap.pid, start_time: snap.start_time + 1, ..snap.clone() }.is_from_live_process());

    // The publisher holds only a Weak: dropping every handle frees the runtime.
    let weak = Arc::downgrade(&rt.shared);
    drop((alpha, beta, rt));
    let deadline = Instant::now() + Duration::from_secs(2);
    while weak.upgrade().is_some() {
        assert!(Instant::now() < deadline, "publishing kept the runtime alive");
        thread::sleep(Duration::from_millis(5));
    }
    // With the runtime gone its periodic job lets go of the writer by
    // itself; the handle removes the file.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&handle.writer) > 1 {
        assert!(Instant::now() < deadline, "the publisher outlived its runtime");
        thread::sleep(Duration::from_millis(5));
    }
    assert!(path.exists());
    drop(handle);
    assert!(!path.exists(), "the file is removed with its handle");
}

#[test]
fn dropping_the_handle_stops_a_live_publisher() {
    let dir = TestDir::new("stop");
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let handle = start_in(&rt, &dir.0).unwrap();
    let path = handle.path().to_owned();
    let first = Snapshot::read(&path).unwrap();
    read_until(&path, |s| s.generation > first.generation);
    drop(handle);
    assert!(!path.exists());
    // Two runtimes of one process get distinct files.
    let a = start_in(&rt, &dir.0).unwrap();
    let b = start_in(&rt, &dir.0).unwrap();
    assert_ne!(a.path(), b.path());
}

/// Only a real directory of ours is listed: in a shared temp dir another
/// user can plant `cmwq-<our uid>` as a symlink to a directory of their
/// choosing, where a tool deleting stale files would delete ours.
#[test]
fn a_symlinked_or_foreign_directory_is_not_ours() {
    let dir = TestDir::new("ours");
    assert!(is_our_dir(&dir.0));
    let link = dir.0.with_extension("link");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&dir.0, &link).unwrap();
    assert!(!is_our_dir(&link), "a symlink to our directory");
    fs::remove_file(&link).unwrap();
    assert!(!is_our_dir(&dir.0.join("missing")));
    if euid() == 0 {
        let theirs = TestDir::new("theirs");
        std::os::unix::fs::chown(&theirs.0, Some(65534), Some(65534)).unwrap();
        assert!(!is_our_dir(&theirs.0), "another user's directory");
    }
}

/// Anyone with write access can truncate the file (`: > file`); the
/// publisher must carry on, not die of SIGBUS.
#[test]
fn truncating_a_live_runtimes_file_neither_kills_nor_stops_its_publisher() {
    let dir = TestDir::new("truncate");
    let rt = Runtime::builder().cpus([0]).publish(false).build().unwrap();
    let handle = start_in(&rt, &dir.0).unwrap();
    let path = handle.path().to_owned();
    let before = Snapshot::read(&path).unwrap().generation;
    fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Snapshot::read(&path) {
            Ok(snap) if snap.generation > before + 2 => break,
            Ok(_) => {}
            Err(err) => assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}"),
        }
        assert!(Instant::now() < deadline, "the truncated file was never rewritten");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(lock_writer(&handle.writer).is_some(), "the publisher stopped");
    let _wq = rt.workqueue("after").build().unwrap();
    read_until(&path, |s| s.queues.iter().any(|q| q.name == "after"));
}

/// A reader racing someone who truncates the file and puts it back gets
/// the snapshot or a clear error, never SIGBUS.
#[test]
fn reading_a_file_truncated_under_the_reader_is_a_clear_error() {
    let dir = TestDir::new("truncated-read");
    let (writer, path) = Writer::create(&dir.0, 1, 1, &sample(3, 20_000).encode()).unwrap();
    let whole = fs::read(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let cutter = {
        let (stop, path) = (stop.clone(), path.clone());
        thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut cuts = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for len in [0, 30, 64, 100, 8192] {
                    file.set_len(len).unwrap();
                    file.write_all_at(&whole, 0).unwrap();
                    cuts += 1;
                }
            }
            cuts
        })
    };
    let (mut good, mut refused) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match Snapshot::read(&path) {
            Ok(snap) => {
                assert_eq!(snap, sample(3, 20_000));
                good += 1;
            }
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
                refused += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(cutter.join().unwrap() > 0);
    assert!(good + refused > 100, "{good} good and {refused} refused reads");
    drop(writer);
}

/// The checksum catches payload bytes that do not belong to the header's
/// snapshot, whatever the sequence counter says.
#[test]
fn a_payload_changed_behind_the_headers_back_is_refused() {
    use std::os::unix::fs::FileExt;
    let dir = TestDir::new("checksum");
    let (writer, path) = Writer::create(&dir.0, 1, 1, &sample(1, 40).encode()).unwrap();
    let bytes = fs::read(&path).unwrap();
    let dump = bytes.windows(40).position(|w| w.iter().all(|&b| b == b'b')).unwrap();
    fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"c", dump as u64 + 7).unwrap();
    let err = Snapshot::read(&path).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("checksum"), "{err}");
    drop(writer);
}

/// A process in another pid namespace has a pid meaningless here, but its
/// writer holds the file's lock: neither a reader nor the sweep removes it
/// until the writer goes.
#[test]
fn a_file_held_by_its_writer_is_not_abandoned_whatever_its_pid() {
    let dir = TestDir::new("held");
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let absent = pid_max + 1;
    let (first, path) = Writer::create(&dir.0, absent, 1, &sample(1, 10).encode()).unwrap();
    let (second, other) = Writer::create(&dir.0, absent, 2, &sample(2, 10).encode()).unwrap();
    let file = PublishedFile { path: path.clone(), pid: absent, runtime_id: 1 };
    assert!(file.is_held().unwrap());
    assert!(!file.remove_if_abandoned().unwrap());
    sweep(&dir.0);
    assert!(path.exists() && other.exists(), "a held file was swept");
    assert_eq!(file.read().unwrap(), sample(1, 10), "probing the lock left the file readable");
    assert!(file.is_held().unwrap(), "probing the lock left it held");

    drop((first, second));
    assert!(!file.is_held().unwrap());
    assert!(file.remove_if_abandoned().unwrap());
    assert!(!path.exists());
    assert!(!file.remove_if_abandoned().unwrap(), "already gone");
    sweep(&dir.0);
    assert!(!other.exists(), "an abandoned file of an absent pid was left");
}

/// A hidden file being built is held from the start; one a crashed writer
/// left behind is not, and is swept.
#[test]
fn the_sweep_leaves_a_held_hidden_file() {
    let dir = TestDir::new("held-tmp");
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    let (held, left) = (dir.0.join(format!(".{}.1.tmp", pid_max + 1)), dir.0.join(format!(".{}.2.tmp", pid_max + 1)));
    fs::write(&held, b"").unwrap();
    fs::write(&left, b"").unwrap();
    let lock = fs::File::open(&held).unwrap();
    // SAFETY: `flock` only reads its arguments; `lock` is open across the call.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_SH) }, 0);
    sweep(&dir.0);
    assert!(held.exists(), "a held hidden file was swept");
    assert!(!left.exists(), "an abandoned hidden file was left");
}

#[test]
fn probing_the_lock_refuses_what_is_not_a_regular_file() {
    let dir = TestDir::new("probe");
    let probe = |path: PathBuf| PublishedFile { path, pid: 1, runtime_id: 1 };
    let err = probe(dir.0.clone()).is_held().unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    assert!(probe(dir.0.clone()).remove_if_abandoned().is_err());
    assert!(dir.0.exists());
    let link = dir.0.join("1.1");
    std::os::unix::fs::symlink(dir.0.join("elsewhere"), &link).unwrap();
    assert!(probe(link.clone()).remove_if_abandoned().is_err(), "a symlink is not followed");
    assert!(fs::symlink_metadata(&link).is_ok());
    assert_eq!(probe(dir.0.join("missing")).is_held().unwrap_err().kind(), io::ErrorKind::NotFound);
    assert!(!probe(dir.0.join("missing")).remove_if_abandoned().unwrap());
}
