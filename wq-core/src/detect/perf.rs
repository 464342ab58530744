//! Sleep detection from the kernel's own context-switch records.
//!
//! Each probe is a `perf_event_open` software dummy event on one thread with
//! `context_switch` records, user-space only (so it is allowed at
//! `perf_event_paranoid <= 2` without privileges). Its ring buffer is mapped
//! read-only, which puts it in overwrite mode, and written backward
//! (`write_backward`), so the newest record always starts at `data_head`:
//! a poll reads one record, never the history, and can never lose the
//! newest one (see `README.md` in this directory for the protocol).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ThreadState;

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_DUMMY: u64 = 9;
const PERF_SAMPLE_TIME: u64 = 1 << 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

// Bits of `perf_event_attr`'s flag word, in the order of the kernel's bitfield.
const ATTR_EXCLUDE_KERNEL: u64 = 1 << 5;
const ATTR_EXCLUDE_HV: u64 = 1 << 6;
const ATTR_WATERMARK: u64 = 1 << 14;
const ATTR_SAMPLE_ID_ALL: u64 = 1 << 18;
const ATTR_USE_CLOCKID: u64 = 1 << 25;
const ATTR_CONTEXT_SWITCH: u64 = 1 << 26;
const ATTR_WRITE_BACKWARD: u64 = 1 << 27;

const PERF_RECORD_SWITCH: u32 = 14;
const PERF_RECORD_MISC_SWITCH_OUT: u16 = 1 << 13;
const PERF_RECORD_MISC_SWITCH_OUT_PREEMPT: u16 = 1 << 14;

/// Offsets in `struct perf_event_mmap_page` (fixed by the kernel ABI: the
/// control fields start at 1024 bytes).
const DATA_HEAD: usize = 1024;
const DATA_OFFSET: usize = 1040;
const DATA_SIZE: usize = 1048;

/// Data pages in the ring. Overwrite mode only ever needs the newest record,
/// so one page (256 switch records) leaves ample room between the record
/// being read and the kernel's writing position.
const DATA_PAGES: usize = 1;

/// Room for records the kernel has reserved but not yet published: one
/// thread's switch records are written one at a time, so one record
/// (16 bytes here) is the real bound; this leaves a wide margin.
const IN_FLIGHT_MARGIN: u64 = 256;

/// How many records to step over looking for a switch record before giving up.
const MAX_SKIPPED_RECORDS: usize = 16;

/// `struct perf_event_attr` up to `sig_data` (`PERF_ATTR_SIZE_VER7`).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_watermark: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved_2: u16,
    aux_sample_size: u32,
    reserved_3: u32,
    sig_data: u64,
}

const _: () = assert!(std::mem::size_of::<PerfEventAttr>() == 128, "PERF_ATTR_SIZE_VER7 is 128 bytes");

/// A perf context-switch probe on one thread; see the module docs.
pub(crate) struct PerfProbe {
    /// Keeps the event alive; closed on drop, after the mapping is gone.
    _event: OwnedFd,
    base: NonNull<u8>,
    map_len: usize,
    data_offset: usize,
    /// A power of two.
    data_size: u64,
    /// One `CLOCK_MONOTONIC` reading and the `Instant` taken just after it,
    /// to turn record timestamps into `Instant`s (the same clock on Linux).
    anchor_ns: u64,
    anchor: Instant,
}

// SAFETY: the probe exclusively owns its fd and mapping; the only other party
// touching the mapping is the kernel, and nothing about the event is tied to
// the thread that holds the probe (it follows the tid it was opened on).
unsafe impl Send for PerfProbe {}

/// What the newest switch record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Newest {
    /// No record yet: the thread has not been switched out since the probe was made.
    Nothing,
    Switch {
        misc: u16,
        time_ns: u64,
    },
    /// The ring held no recognisable switch record, or reads kept racing the writer.
    Unreadable,
}

impl PerfProbe {
    /// Opens the event on the calling thread and maps its ring.
    pub(crate) fn attach_current() -> io::Result<PerfProbe> {
        PerfProbe::attach(crate::sys::gettid())
    }

    /// Opens the event on thread `tid` of this process (the monitor arms
    /// probes on workers this way) and maps its ring.
    pub(crate) fn attach(tid: i32) -> io::Result<PerfProbe> {
        let page = page_size()?;
        let mut attr = PerfEventAttr {
            kind: PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_DUMMY,
            sample_type: PERF_SAMPLE_TIME,
            flags: ATTR_EXCLUDE_KERNEL
                | ATTR_EXCLUDE_HV
                | ATTR_WATERMARK
                | ATTR_SAMPLE_ID_ALL
                | ATTR_USE_CLOCKID
                | ATTR_CONTEXT_SWITCH
                | ATTR_WRITE_BACKWARD,
            // Nobody waits on the fd: ask for a wakeup only once per full ring.
            wakeup_watermark: (DATA_PAGES * page) as u32,
            clockid: libc::CLOCK_MONOTONIC,
            ..PerfEventAttr::default()
        };
        // SAFETY: `attr` is a live, fully initialised perf_event_attr whose
        // `size` field is its real size; the kernel reads it and at most
        // writes `size` back. The other arguments are plain integers.
        let rc = unsafe {
            libc::syscall(libc::SYS_perf_event_open, &mut attr as *mut PerfEventAttr, tid, -1, -1, PERF_FLAG_FD_CLOEXEC)
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!("perf_event_open: {}", open_error_reason(&err, paranoid())),
            ));
        }
        let raw_fd = i32::try_from(rc)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "perf_event_open returned an invalid fd"))?;
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw_fd) };

        let map_len = (1 + DATA_PAGES) * page;
        // SAFETY: a fresh shared read-only mapping of the event fd; the kernel
        // checks the length and we check the result before using it.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(err.kind(), format!("perf ring mmap: {}", mmap_error_reason(&err))));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("perf ring mmap returned null"))?;
        let anchor_ns = monotonic_ns();
        let mut probe = PerfProbe {
            _event: fd,
            base,
            map_len,
            data_offset: page,
            data_size: (DATA_PAGES * page) as u64,
            anchor_ns,
            anchor: Instant::now(),
        };
        // Kernels since 4.1 say where the data area is; older ones leave 0
        // and use the layout assumed above.
        let (offset, size) = (probe.read_meta(DATA_OFFSET), probe.read_meta(DATA_SIZE));
        if size != 0 {
            let fits = offset.checked_add(size).is_some_and(|end| end <= map_len as u64);
            if !size.is_power_of_two() || offset % 8 != 0 || !fits {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("perf ring has an unexpected layout (data_offset {offset}, data_size {size})"),
                ));
            }
            probe.data_offset = offset as usize;
            probe.data_size = size;
        }
        Ok(probe)
    }

    /// The thread's state according to the newest context-switch record.
    pub(crate) fn poll(&mut self) -> ThreadState {
        // No record yet: the probe was made on the running thread itself.
        self.poll_recorded().unwrap_or(ThreadState::Running)
    }

    /// The state the newest context-switch record gives, or `None` if the
    /// thread has not been switched since the probe was opened (a probe
    /// opened from another thread cannot tell what it is doing then).
    pub(crate) fn poll_recorded(&mut self) -> Option<ThreadState> {
        match self.newest() {
            Newest::Nothing => None,
            Newest::Switch { misc, time_ns } => Some(state_from_switch(misc, time_ns, |t| self.instant_of(t))),
            Newest::Unreadable => Some(ThreadState::Unknown),
        }
    }

    /// Reads the newest switch record, retrying when the kernel may have
    /// overwritten it while it was being read.
    fn newest(&self) -> Newest {
        for _ in 0..4 {
            // Relaxed, then a fence: the ring is mapped read-only, and only
            // relaxed atomic loads of read-only memory are allowed (std's
            // "Atomic accesses to read-only memory"); the fence orders the
            // record reads after it as an acquire load would.
            let first = self.head().load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if first == 0 {
                return Newest::Nothing;
            }
            if first % 8 != 0 {
                return Newest::Unreadable;
            }
            // Backward writing starts at 0 and goes down, so `-head` is the
            // number of bytes ever written: never read older than that.
            let limit = 0u64.wrapping_sub(first).min(self.data_size - IN_FLIGHT_MARGIN);
            let (found, read) = self.scan(first, limit);
            // Order the record reads above before the second head read:
            // if head moved less than the slack, nothing we read was reused.
            fence(Ordering::Acquire);
            let moved = first.wrapping_sub(self.head().load(Ordering::Relaxed));
            if moved.saturating_add(read).saturating_add(IN_FLIGHT_MARGIN) <= self.data_size {
                return found;
            }
        }
        Newest::Unreadable
    }

    /// Walks records from `head` (newest) towards older ones until a switch
    /// record; returns it and how many bytes were read.
    fn scan(&self, head: u64, limit: u64) -> (Newest, u64) {
        let mut pos = 0;
        for _ in 0..MAX_SKIPPED_RECORDS {
            if pos + 8 > limit {
                break;
            }
            let (kind, misc, size) = self.header(head.wrapping_add(pos));
            let size = u64::from(size);
            if size < 8 || size % 8 != 0 || pos + size > limit {
                return (Newest::Unreadable, pos + 8);
            }
            if kind == PERF_RECORD_SWITCH && size >= 16 {
                // With sample_id_all and only PERF_SAMPLE_TIME, the record
                // ends with the timestamp.
                let time_ns = self.word(head.wrapping_add(pos + size - 8));
                return (Newest::Switch { misc, time_ns }, pos + size);
            }
            pos += size;
        }
        (Newest::Unreadable, pos)
    }

    fn head(&self) -> &AtomicU64 {
        // SAFETY: DATA_HEAD is inside the first (metadata) page of our live
        // mapping and 8-byte aligned (the mapping is page aligned); the kernel
        // updates it concurrently, which is why it is only accessed atomically.
        unsafe { &*self.base.as_ptr().add(DATA_HEAD).cast::<AtomicU64>() }
    }

    fn read_meta(&self, offset: usize) -> u64 {
        // SAFETY: callers pass DATA_OFFSET / DATA_SIZE: aligned u64 fields
        // inside the live metadata page.
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(offset).cast::<u64>()) }
    }

    /// The byte offset in the mapping of ring position `pos` (8-aligned).
    fn slot(&self, pos: u64) -> usize {
        self.data_offset + (pos & (self.data_size - 1)) as usize
    }

    /// One u64 of record data at ring position `pos` (a multiple of 8).
    fn word(&self, pos: u64) -> u64 {
        // SAFETY: `slot` stays inside the data area (masked by its power-of-two
        // size) and is 8-aligned because records and the area are. The kernel
        // may be rewriting it; a volatile read of plain integers tolerates
        // that, and `newest` discards values read while that was possible.
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(self.slot(pos)).cast::<u64>()) }
    }

    /// `perf_event_header { u32 type; u16 misc; u16 size }` at `pos`.
    fn header(&self, pos: u64) -> (u32, u16, u16) {
        let at = self.slot(pos);
        // SAFETY: as in `word`: the 8 header bytes lie inside the data area at
        // an 8-aligned offset, so the u32 and u16 reads are aligned and in bounds.
        unsafe {
            let p = self.base.as_ptr().add(at);
            (
                std::ptr::read_volatile(p.cast::<u32>()),
                std::ptr::read_volatile(p.add(4).cast::<u16>()),
                std::ptr::read_volatile(p.add(6).cast::<u16>()),
            )
        }
    }

    fn instant_of(&self, time_ns: u64) -> Instant {
        let shifted = if time_ns >= self.anchor_ns {
            self.anchor.checked_add(Duration::from_nanos(time_ns - self.anchor_ns))
        } else {
            self.anchor.checked_sub(Duration::from_nanos(self.anchor_ns - time_ns))
        };
        shifted.unwrap_or(self.anchor)
    }
}

impl Drop for PerfProbe {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` describe the mapping made in
        // `attach_current`, unmapped only here; no reference into it outlives
        // `&self` borrows, which have all ended. The fd closes afterwards.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}

/// The state a switch record means: out without `PREEMPT` is a sleep (the
/// thread blocked), out with `PREEMPT` is still runnable, in is running.
fn state_from_switch(misc: u16, time_ns: u64, to_instant: impl Fn(u64) -> Instant) -> ThreadState {
    if misc & PERF_RECORD_MISC_SWITCH_OUT == 0 || misc & PERF_RECORD_MISC_SWITCH_OUT_PREEMPT != 0 {
        ThreadState::Running
    } else {
        ThreadState::Sleeping { since: to_instant(time_ns) }
    }
}

fn page_size() -> io::Result<usize> {
    // SAFETY: sysconf only reads its integer argument.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|p| p.is_power_of_two() && *p >= 4096)
        .ok_or_else(|| io::Error::other(format!("unusable page size {page}")))
}

fn monotonic_ns() -> u64 {
    u64::try_from(crate::sys::clock(libc::CLOCK_MONOTONIC).as_nanos()).unwrap_or(u64::MAX)
}

/// `/proc/sys/kernel/perf_event_paranoid`, if readable.
pub(crate) fn paranoid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").ok()?.trim().parse().ok()
}

/// Why `perf_event_open` failed, in words a `Runtime::dump()` reader can act on.
pub(crate) fn open_error_reason(err: &io::Error, paranoid: Option<i32>) -> String {
    let level = paranoid.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
    let why = match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "refused (perf_event_paranoid is {level}; user-only events need <= 2, \
             or a seccomp filter / missing CAP_PERFMON blocks it)"
        ),
        Some(libc::ENOSYS) => {
            "the kernel has no perf events (CONFIG_PERF_EVENTS off) or a filter hides the syscall".into()
        }
        Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::E2BIG) => {
            "the kernel does not support context-switch records with write_backward (needs Linux 4.7 or later)".into()
        }
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out of file descriptors (one perf fd per worker thread)".into(),
        Some(libc::ESRCH) => "the thread no longer exists".into(),
        _ => "unexpected error".into(),
    };
    format!("{why} ({err})")
}

/// Why mapping the ring failed.
pub(crate) fn mmap_error_reason(err: &io::Error) -> String {
    let why = match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOMEM) | Some(libc::EAGAIN) => {
            "over the locked-memory limit for perf rings (perf_event_mlock_kb, RLIMIT_MEMLOCK)"
        }
        _ => "unexpected error",
    };
    format!("{why} ({err})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::{mpsc, Arc};

    #[test]
    fn switch_records_map_to_states() {
        let at = Instant::now();
        let to = |_| at;
        assert_eq!(state_from_switch(0, 5, to), ThreadState::Running, "switch-in");
        assert_eq!(state_from_switch(PERF_RECORD_MISC_SWITCH_OUT, 5, to), ThreadState::Sleeping { since: at });
        let preempt = PERF_RECORD_MISC_SWITCH_OUT | PERF_RECORD_MISC_SWITCH_OUT_PREEMPT;
        assert_eq!(state_from_switch(preempt, 5, to), ThreadState::Running, "preemption is not a sleep");
    }

    #[test]
    fn error_reasons_name_the_cause() {
        let eacces = open_error_reason(&io::Error::from_raw_os_error(libc::EACCES), Some(3));
        assert!(eacces.contains("perf_event_paranoid is 3") && eacces.contains("<= 2"), "{eacces}");
        let eperm = open_error_reason(&io::Error::from_raw_os_error(libc::EPERM), None);
        assert!(eperm.contains("seccomp") && eperm.contains("unknown"), "{eperm}");
        assert!(open_error_reason(&io::Error::from_raw_os_error(libc::ENOSYS), Some(2)).contains("CONFIG_PERF_EVENTS"));
        assert!(open_error_reason(&io::Error::from_raw_os_error(libc::EINVAL), Some(2)).contains("4.7"));
        assert!(open_error_reason(&io::Error::from_raw_os_error(libc::EMFILE), Some(2)).contains("file descriptors"));
        assert!(mmap_error_reason(&io::Error::from_raw_os_error(libc::EPERM)).contains("RLIMIT_MEMLOCK"));
    }

    #[test]
    fn own_thread_reads_running() {
        let mut probe = PerfProbe::attach_current().unwrap();
        // A switch-out is always followed by a switch-in record before the
        // thread runs again, so a thread polling itself must see Running.
        for _ in 0..3 {
            assert_eq!(probe.poll(), ThreadState::Running);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(probe.data_size.is_power_of_two() && probe.data_size >= 4096);
    }

    /// Polls a probe every millisecond until `done`, recording state changes.
    fn watch(mut probe: PerfProbe, done: &AtomicBool) -> Vec<(ThreadState, Instant)> {
        let mut seen: Vec<(ThreadState, Instant)> = Vec::new();
        while !done.load(Ordering::Acquire) {
            let state = probe.poll();
            let changed = match (seen.last(), state) {
                (Some((ThreadState::Sleeping { .. }, _)), ThreadState::Sleeping { .. }) => false,
                (Some((last, _)), now) => *last != now,
                (None, _) => true,
            };
            if changed {
                seen.push((state, Instant::now()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        seen
    }

    fn spin_for(d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn sleep_is_seen_then_wake() {
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let released = Arc::new(AtomicBool::new(false));
        let sleeper = {
            let (done, released) = (done.clone(), released.clone());
            std::thread::spawn(move || {
                tx.send(PerfProbe::attach_current().unwrap()).unwrap();
                spin_for(Duration::from_millis(60));
                let start = Instant::now();
                std::thread::sleep(Duration::from_millis(200));
                let end = Instant::now();
                spin_for(Duration::from_millis(60));
                done.store(true, Ordering::Release);
                // Stay runnable until the poller has stopped, so thread exit
                // is never observed.
                while !released.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                (start, end)
            })
        };
        let seen = watch(rx.recv().unwrap(), &done);
        released.store(true, Ordering::Release);
        let (start, end) = sleeper.join().unwrap();
        let sleeping: Vec<_> = seen.iter().filter(|(s, _)| matches!(s, ThreadState::Sleeping { .. })).collect();
        assert_eq!(sleeping.len(), 1, "exactly one sleep expected: {seen:?}");
        let &&(ThreadState::Sleeping { since }, noticed) = &sleeping[0] else { unreachable!() };
        assert!(start <= since && since <= noticed && noticed <= end, "sleep order wrong: {seen:?}");
        assert!(matches!(seen.last(), Some((ThreadState::Running, at)) if *at >= noticed), "wake not seen: {seen:?}");
        assert!(!seen.iter().any(|(s, _)| *s == ThreadState::Unknown), "{seen:?}");
    }

    #[test]
    fn spinning_thread_is_never_sleeping() {
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let spinner = {
            let done = done.clone();
            std::thread::spawn(move || {
                tx.send(PerfProbe::attach_current().unwrap()).unwrap();
                while !done.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
            })
        };
        let mut probe = rx.recv().unwrap();
        for _ in 0..100 {
            assert_eq!(probe.poll(), ThreadState::Running);
            std::thread::sleep(Duration::from_micros(500));
        }
        done.store(true, Ordering::Release);
        spinner.join().unwrap();
    }

    /// Voluntary / involuntary switch counts of the calling thread.
    fn ctxt_switches() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let field =
            |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap();
        (field("voluntary_ctxt_switches:"), field("nonvoluntary_ctxt_switches:"))
    }

    #[test]
    fn preemption_is_not_a_sleep() {
        let cpu = crate::sys::allowed_cpus().unwrap()[0];
        let done = Arc::new(AtomicBool::new(false));
        let spinning = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let spinners: Vec<_> = (0..2)
            .map(|_| {
                let (done, tx, spinning) = (done.clone(), tx.clone(), spinning.clone());
                std::thread::spawn(move || {
                    crate::sys::set_current_affinity(&[cpu]).unwrap();
                    tx.send(PerfProbe::attach_current().unwrap()).unwrap();
                    // Sending and reading /proc may block briefly (a real
                    // sleep); polling starts once both threads only spin.
                    let before = ctxt_switches();
                    spinning.fetch_add(1, Ordering::AcqRel);
                    while !done.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    let after = ctxt_switches();
                    after.1 - before.1
                })
            })
            .collect();
        let mut probes: Vec<PerfProbe> = vec![rx.recv().unwrap(), rx.recv().unwrap()];
        while spinning.load(Ordering::Acquire) < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The newest record now comes from spinning: a switch-in or a preemption.
        std::thread::sleep(Duration::from_millis(5));
        let mut states = Vec::new();
        for _ in 0..300 {
            states.extend(probes.iter_mut().map(|p| p.poll()));
            std::thread::sleep(Duration::from_millis(1));
        }
        done.store(true, Ordering::Release);
        let preemptions: u64 = spinners.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(preemptions > 0, "the two pinned spinners should have preempted each other");
        assert!(states.iter().all(|s| *s == ThreadState::Running), "preempted thread reported as {states:?}");
    }
}
