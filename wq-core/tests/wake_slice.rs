//! A worker that parks in a quiet pool asks the scheduler for a short
//! slice, so a lone item's wake-up preempts the queueing thread; one that
//! takes an entry with more queued behind it gives the slice back
//! (`worker/slice.rs`). Read through `sched_getattr`, on the item's own
//! thread or on the parked worker's tid.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use wq_core::{Detector, Error, Flags, Runtime, Workqueue};

/// The slice the runtime asks for by default.
const SHORT: Duration = Duration::from_micros(100);

/// The first version of the kernel's `struct sched_attr`.
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

/// The `sched_runtime` the kernel reports for thread `tid` (0: the caller):
/// a fair thread's slice on Linux 6.12 and later.
fn slice_of(tid: i32) -> u64 {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: `attr` is live and writable, and `size` is its length.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, tid, &mut attr as *mut SchedAttr, size, 0) };
    assert_eq!(rc, 0, "sched_getattr({tid}): {}", std::io::Error::last_os_error());
    attr.runtime
}

/// Sets the calling thread's `sched_runtime` (0: the default slice).
fn set_own_slice(runtime: u64) {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: as in `slice_of`.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, size, 0) };
    assert_eq!(rc, 0);
    attr.size = size;
    attr.flags = 0;
    attr.runtime = runtime;
    // SAFETY: `attr` is a valid `sched_attr` of the size it names.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    assert_eq!(rc, 0, "sched_setattr: {}", std::io::Error::last_os_error());
}

/// What this kernel reports for a thread that asked for `SHORT`, and for
/// one on the default slice. Before Linux 6.12 both read 0: the kernel
/// ignores the request, and the expectations below then say "unchanged".
fn kernel_slices() -> (u64, u64) {
    let probe = std::thread::spawn(|| {
        set_own_slice(SHORT.as_nanos() as u64);
        let short = slice_of(0);
        set_own_slice(0);
        (short, slice_of(0))
    });
    let (short, default) = probe.join().unwrap();
    assert!(short == 0 || short == SHORT.as_nanos() as u64, "a {SHORT:?} slice reads as {short} ns");
    (short, default)
}

/// One item records its worker's tid; returns it once that worker parked
/// with the slice `expect`.
fn parked_worker(wq: &Workqueue, expect: u64) -> i32 {
    let tid = wq.submit(own_tid).unwrap().wait().unwrap();
    common::wait_until("the worker parks with the expected slice", || slice_of(tid) == expect);
    tid
}

/// Waits until worker `tid` sleeps, and still does 20 ms later: parked
/// (a worker between items never sleeps that long in this test).
fn parked(tid: i32) {
    let sleeping = || {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        stat.rsplit(')').next().unwrap().split_whitespace().next() == Some("S")
    };
    loop {
        common::wait_until("the worker sleeps", sleeping);
        std::thread::sleep(Duration::from_millis(20));
        if sleeping() {
            return;
        }
    }
}

fn own_tid() -> i32 {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).expect("/proc/thread-self names a tid")
}

#[test]
fn a_lone_item_runs_on_the_short_slice_and_a_backlog_gives_it_back() {
    let (short, default) = kernel_slices();
    // Without a sleep detector the blocker below holds the pool's only
    // running worker, and everything queued behind it waits as a backlog.
    let rt = Runtime::builder().cpus([0]).detector(Detector::ExplicitOnly).build().unwrap();
    let wq = rt.workqueue("slices").build().unwrap();
    let tid = parked_worker(&wq, short);

    // A lone item in a quiet pool runs on the slice the worker parked with.
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    wq.execute(move || {
        started_tx.send(slice_of(0)).unwrap();
        release_rx.recv().unwrap();
    })
    .unwrap();
    let lone = started_rx.recv().unwrap();
    assert_eq!(lone, short, "the lone item did not run on the short slice");
    // Queued while it runs: the worker takes each of these with more
    // behind it (but the last), and gives the short slice back first.
    let behind: Vec<_> = (0..10).map(|_| wq.submit(|| slice_of(0)).unwrap()).collect();
    release_tx.send(()).unwrap();
    let backlog: Vec<u64> = behind.into_iter().map(|c| c.wait().unwrap()).collect();
    assert_eq!(backlog, [default; 10], "items taken with a backlog ran on the short slice");

    // Quiet again: the worker parks on the short slice once more.
    common::wait_until("the worker parks on the short slice again", || slice_of(tid) == short);
}

#[test]
fn a_worker_parking_beside_a_running_one_keeps_the_default_slice() {
    let (short, default) = kernel_slices();
    // An unbound pool on one CPU runs two workers at once. The spinner
    // must keep counting as running, however long a loaded machine takes:
    // a CPU hog would stop counting, and the pool would look quiet.
    let rt = Runtime::builder().cpus([0]).cpu_hog_threshold(Duration::from_secs(600)).build().unwrap();
    let wq = rt.workqueue("beside").flags(Flags::UNBOUND).build().unwrap();
    parked_worker(&wq, short);
    let spinning = Arc::new(AtomicBool::new(true));
    let s = spinning.clone();
    let (started_tx, started_rx) = mpsc::channel();
    wq.execute(move || {
        started_tx.send(()).unwrap();
        while s.load(SeqCst) {
            std::hint::spin_loop();
        }
    })
    .unwrap();
    started_rx.recv().unwrap();
    // Another worker runs this one while the spinner counts as running:
    // the pool is not quiet when it parks.
    let beside = wq.submit(own_tid).unwrap().wait().unwrap();
    parked(beside);
    assert_eq!(slice_of(beside), default, "a worker parked beside a running one on the short slice");
    spinning.store(false, SeqCst);
}

#[test]
fn without_a_wake_slice_workers_keep_the_default() {
    let (_, default) = kernel_slices();
    let rt = Runtime::builder().cpus([0]).wake_slice(None).build().unwrap();
    let wq = rt.workqueue("no_slices").build().unwrap();
    let tid = parked_worker(&wq, default);
    assert_eq!(wq.submit(|| slice_of(0)).unwrap().wait().unwrap(), default);
    assert_eq!(slice_of(tid), default);
}

#[test]
fn a_wake_slice_outside_what_linux_accepts_is_refused_by_name() {
    for bad in [Duration::from_micros(99), Duration::from_millis(101), Duration::ZERO] {
        match Runtime::builder().wake_slice(Some(bad)).build() {
            Err(Error::InvalidConfig(msg)) => assert!(msg.contains("wake_slice"), "{msg}"),
            other => panic!("wake_slice({bad:?}) gave {other:?}"),
        }
    }
    for good in [Duration::from_micros(100), Duration::from_millis(3), Duration::from_millis(100)] {
        Runtime::builder().cpus([0]).wake_slice(Some(good)).build().unwrap();
    }
}
