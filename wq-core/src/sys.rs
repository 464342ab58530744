//! Thin, safe wrappers over the few OS calls the engine needs.
//!
//! Together with `detect::perf` (the perf ring buffer), this is one of the
//! only places in `wq-core` that contain `unsafe`. Each wrapper turns an
//! errno into an `io::Error` and never hands out raw pointers.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Once;
use std::time::Duration;

/// Forks this process is the child of, counted since the first
/// `fork_generation` call: raised in each child by a `pthread_atfork`
/// handler, which the child inherits, so a grandchild counts two.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// The `pthread_atfork` child handler. A child of a multithreaded process
/// may only do async-signal-safe work here; an atomic add is.
extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, Relaxed);
}

/// How many forks lie between the process that first called this and the
/// calling process (0 in that process itself). A runtime records it when
/// built: a different value later means the calling process is a child
/// made by `fork`, in which the runtime's threads do not exist. Relaxed:
/// the handler runs on the thread that called `fork`, before `fork`
/// returns in the child, and that thread is the child's only one.
pub(crate) fn fork_generation() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the handler takes no arguments, returns nothing, and only
        // performs an atomic add on a static, which is async-signal-safe; the
        // `None`s register nothing for the prepare and parent steps. A failure
        // (ENOMEM) leaves forks uncounted, and runtimes as they were before
        // fork detection existed.
        unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
    });
    forks()
}

/// `fork_generation` without the registration, for checks on runtimes
/// whose build registered the handler.
pub(crate) fn forks() -> u64 {
    FORKS.load(Relaxed)
}

/// The kernel thread id of the calling thread (what `/proc/self/task/<tid>` names).
pub(crate) fn gettid() -> i32 {
    // SAFETY: `gettid` takes no arguments, cannot fail and touches no memory.
    unsafe { libc::gettid() }
}

/// The CPU the calling thread runs on right now, if the OS can say.
pub(crate) fn current_cpu() -> Option<usize> {
    // SAFETY: `sched_getcpu` takes no arguments and only returns a value.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// The CPUs the calling thread may run on (`sched_getaffinity`).
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero `cpu_set_t` is a valid, empty CPU set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live, writable `cpu_set_t` and we pass its exact size.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `CPU_ISSET` only reads `set`, and every index is below the set's capacity.
    Ok((0..max).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

/// Moves the calling thread onto `to` and lets it roam `widen` again:
/// pinning migrates a running thread before the call returns, and widening
/// afterwards leaves it where it is until the scheduler moves it.
pub(crate) fn move_current(to: &[usize], widen: &[usize]) -> io::Result<()> {
    set_current_affinity(to)?;
    set_current_affinity(widen)
}

/// Restricts the calling thread to `cpus`.
pub(crate) fn set_current_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: an all-zero `cpu_set_t` is a valid, empty CPU set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    for &cpu in cpus {
        if cpu >= max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is beyond the CPU set size {max}"),
            ));
        }
        // SAFETY: `cpu` is below the set's capacity (checked above), so the write stays inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a live, initialised `cpu_set_t` and we pass its exact size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the nice value of the calling thread (Linux threads have their own).
/// The calling thread's nice value, read from `/proc/thread-self/stat`
/// (`getpriority` cannot tell a nice of -1 from an error).
pub(crate) fn current_nice() -> Option<i32> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which may hold spaces); nice is the 19th field.
    stat.rsplit(')').next()?.split_whitespace().nth(16)?.parse().ok()
}

pub(crate) fn set_current_nice(nice: i32) -> io::Result<()> {
    let tid = gettid() as libc::id_t;
    // SAFETY: `setpriority` only reads its integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's timer slack in nanoseconds.
pub(crate) fn current_timer_slack() -> Option<u64> {
    // SAFETY: PR_GET_TIMERSLACK takes no pointer; it returns the slack.
    let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
    u64::try_from(slack).ok()
}

/// Sets the calling thread's timer slack (how late the kernel may fire its
/// timers to batch wake-ups); failures are ignored, as the default only
/// makes short sleeps longer.
pub(crate) fn set_current_timer_slack(nanos: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, nanos as libc::c_ulong, 0, 0, 0) };
}

/// The first version of the kernel's `struct sched_attr` (48 bytes): all
/// that a fair-class thread's attributes need.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// `SCHED_FLAG_RESET_ON_FORK`, the one flag kept when attributes are set again.
const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// Reads the calling thread's scheduling attributes, lets `change` edit
/// them, and sets them again. Only fair-class threads (`SCHED_OTHER`,
/// `SCHED_BATCH`, `SCHED_IDLE`) are touched; any other policy is an error
/// and left alone. Nice value, policy and slice are kept unless `change`
/// edits them.
fn update_current_sched_attr(change: impl FnOnce(&mut SchedAttr)) -> io::Result<()> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: `attr` is live and writable, and `size` is its length: the
    // kernel writes at most that many bytes.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, size, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let fair = [libc::SCHED_OTHER, libc::SCHED_BATCH, libc::SCHED_IDLE].map(|p| p as u32);
    if !fair.contains(&attr.policy) {
        return Err(io::Error::other(format!("policy {} is not a fair one", attr.policy)));
    }
    attr.size = size;
    attr.flags &= SCHED_FLAG_RESET_ON_FORK;
    change(&mut attr);
    // SAFETY: `attr` is a valid `sched_attr` of the size it names, only read.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the scheduler for a slice of `slice` for the calling thread, or
/// for the default slice again (`None`): a fair-class thread's
/// `sched_runtime`, which EEVDF (Linux 6.12 on) turns into an earlier
/// deadline, so that the thread preempts the running one when it wakes.
/// Earlier kernels accept and ignore it. The thread's policy and nice
/// value are kept; a thread outside the fair classes is left alone (an
/// error).
pub(crate) fn set_current_slice(slice: Option<Duration>) -> io::Result<()> {
    update_current_sched_attr(|attr| {
        attr.runtime = slice.map_or(0, |s| u64::try_from(s.as_nanos()).unwrap_or(u64::MAX));
    })
}

/// The two fair scheduling policies the runtime moves its threads
/// between. They differ in one thing that matters here: a waking
/// `SCHED_BATCH` thread never preempts the running one; it waits for the
/// next scheduling point (the running thread blocks, or its slice ends at
/// a scheduler tick), or runs at once on an idle CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FairPolicy {
    /// `SCHED_OTHER`: wake-ups may preempt.
    Normal,
    /// `SCHED_BATCH`: wake-ups never preempt.
    Batch,
}

/// The calling thread's policy if it is `SCHED_OTHER` or `SCHED_BATCH`;
/// `None` for any other policy (or if the kernel would not say).
pub(crate) fn current_fair_policy() -> Option<FairPolicy> {
    // SAFETY: `sched_getscheduler` takes a thread id (0: the caller) and touches no memory.
    match unsafe { libc::sched_getscheduler(0) } {
        libc::SCHED_OTHER => Some(FairPolicy::Normal),
        libc::SCHED_BATCH => Some(FairPolicy::Batch),
        _ => None,
    }
}

/// Moves the calling thread to `policy`, keeping its nice value and slice.
/// Moving between these two needs no privilege.
pub(crate) fn set_current_fair_policy(policy: FairPolicy) -> io::Result<()> {
    update_current_sched_attr(|attr| {
        attr.policy = match policy {
            FairPolicy::Normal => libc::SCHED_OTHER,
            FairPolicy::Batch => libc::SCHED_BATCH,
        } as u32;
    })
}

/// CPU time consumed by the calling thread (`CLOCK_THREAD_CPUTIME_ID`: a
/// system call, as the vDSO does not serve thread clocks).
pub(crate) fn thread_cpu_time() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time consumed by another thread of this process, by its clock id.
pub(crate) fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live, writable timespec; an invalid clock id only yields EINVAL.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The CPU-time clock of the calling thread, readable from other threads.
pub(crate) fn current_thread_cpu_clock() -> Option<libc::clockid_t> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: `pthread_self` is always valid for the calling thread and `id` is writable.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    (rc == 0).then_some(id)
}
