//! A child made by `fork` has none of a runtime's threads: the parent's
//! runtime must refuse work there (not queue it for nobody), refuse waits
//! (not hang), and leave the parent's state alone when dropped, while a
//! runtime built in the child works. Alone in its binary: the child is a
//! copy of this process, and fewer threads mean fewer locks held at the fork.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wq_core::{DelayedWork, Error, PublishedFile, Runtime, Work};

/// Exit codes of the child, one per check, so a failure names its step.
#[derive(Clone, Copy, Debug)]
#[repr(i32)]
enum Step {
    Queue = 10,
    Submit,
    QueueOn,
    Delayed,
    Flush,
    Drain,
    Destroy,
    NewQueue,
    Freeze,
    OwnRuntime,
    Panicked,
    Stats,
    Dump,
    Thaw,
    WorkFlush,
    WorkCancelSync,
    DelayedFlush,
}

/// The parent's items as they were at the fork.
struct AtFork {
    /// Running (it waits for the parent to release it).
    running: Work,
    /// Queued behind `running` on an ordered queue.
    pending: Work,
    /// Armed with a long delay.
    armed: DelayedWork,
}

/// The child's side: every call of the parent's runtime that would queue or
/// wait is refused with `Error::Forked`, and so is a wait for an item the
/// parent queued; the views of the runtime take none of its locks (a
/// parent's thread may have held one at the fork) and say it has no
/// workers here; a runtime of its own runs work.
fn in_child(rt: Runtime, wq: wq_core::Workqueue, work: Work, at_fork: &AtFork) -> Result<(), Step> {
    let forked = |r: Result<(), Error>, step| match r {
        Err(Error::Forked) => Ok(()),
        _ => Err(step),
    };
    forked(at_fork.pending.flush().map(drop), Step::WorkFlush)?;
    forked(at_fork.running.cancel_sync().map(drop), Step::WorkCancelSync)?;
    forked(at_fork.armed.flush().map(drop), Step::DelayedFlush)?;
    let stats = rt.stats();
    if stats.workers != 0 || !stats.pools.is_empty() {
        return Err(Step::Stats);
    }
    if !rt.dump().contains("fork") {
        return Err(Step::Dump);
    }
    rt.thaw();
    if rt.is_frozen() || wq.stats().total != 0 || !rt.stop_trace().events.is_empty() {
        return Err(Step::Thaw);
    }
    forked(wq.try_queue(&work).map(drop), Step::Queue)?;
    forked(wq.submit(|| 1).map(drop), Step::Submit)?;
    forked(wq.queue_on(0, &work).map(drop), Step::QueueOn)?;
    let dwork = DelayedWork::new(|| {});
    forked(wq.try_queue_delayed(&dwork, Duration::from_millis(1)).map(drop), Step::Delayed)?;
    forked(wq.flush(), Step::Flush)?;
    forked(wq.drain(), Step::Drain)?;
    forked(wq.destroy(), Step::Destroy)?;
    forked(rt.workqueue("child").build().map(drop), Step::NewQueue)?;
    forked(rt.freeze(), Step::Freeze)?;
    if wq.queue(&work) {
        return Err(Step::Queue);
    }
    drop((wq, rt));
    let own = Runtime::builder().cpus([0]).publish(false).build().map_err(|_| Step::OwnRuntime)?;
    let q = own.workqueue("own").build().map_err(|_| Step::OwnRuntime)?;
    match q.submit(|| 6 * 7).map(|c| c.wait()) {
        Ok(Ok(42)) => Ok(()),
        _ => Err(Step::OwnRuntime),
    }
}

/// Waits for `pid` for up to 30 s (killing it then); its exit status.
fn wait_for(pid: libc::pid_t) -> Result<i32, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live, writable int; `pid` is our child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            return Err(format!("the child ended abnormally (wait status {status:#x})"));
        }
        if rc < 0 {
            return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err("the child hung: killed after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_fork_child_gets_errors_from_the_parents_runtime_and_can_build_its_own() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("parent").build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let work = Work::new({
        let ran = ran.clone();
        move || _ = ran.fetch_add(1, Ordering::SeqCst)
    });
    // Workers, monitor and timer all exist before the fork. The delayed
    // item has fired by then, so no armed timer holds a handle, and the
    // child's drop of these handles is the runtime's last.
    assert!(wq.queue(&work));
    wq.flush().unwrap();
    let fired = DelayedWork::new(|| {});
    wq.queue_delayed(&fired, Duration::from_millis(1));
    fired.flush().unwrap();
    let own_file = || PublishedFile::list().into_iter().any(|f| f.pid == std::process::id());
    assert!(own_file(), "the parent's runtime publishes its counters");
    // An item running at the fork and one pending behind it, and a timer armed.
    let ordered = rt.workqueue("parent-ordered").ordered().build().unwrap();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let release_rx = std::sync::Mutex::new(release_rx);
    let at_fork = AtFork {
        running: Work::new(move || {
            let _ = started_tx.send(());
            let _ = release_rx.lock().unwrap().recv_timeout(Duration::from_secs(60));
        }),
        pending: Work::new(|| {}),
        armed: DelayedWork::new(|| {}),
    };
    assert!(ordered.queue(&at_fork.running));
    started_rx.recv_timeout(Duration::from_secs(10)).expect("the running item never started");
    assert!(ordered.queue(&at_fork.pending));
    assert!(ordered.queue_delayed(&at_fork.armed, Duration::from_secs(3600)));

    // SAFETY: the child only runs `in_child` (queue checks, allocation,
    // thread creation), never returns into the test harness, and ends with
    // `_exit`, which runs no handlers of the parent's.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let (rt2, wq2, work2) = (rt.clone(), wq.clone(), work.clone());
        let child = std::panic::AssertUnwindSafe(|| in_child(rt2, wq2, work2, &at_fork));
        let code = match std::panic::catch_unwind(child) {
            Ok(Ok(())) => 0,
            Ok(Err(step)) => step as i32,
            Err(_) => Step::Panicked as i32,
        };
        // The parent's handles, dropped last: the `Drop`s must neither
        // wait for the parent's threads nor remove its counter file.
        drop((rt, wq, work));
        // SAFETY: ends the child at once, as a fork child must.
        unsafe { libc::_exit(code) };
    }
    let child = wait_for(pid);
    release_tx.send(()).unwrap();
    assert_eq!(child, Ok(0), "exit codes: see `Step`");
    // The parent's items are the parent's still.
    at_fork.pending.flush().unwrap();
    assert!(!at_fork.pending.is_pending() && !at_fork.running.is_running());
    assert!(at_fork.armed.cancel_sync().unwrap(), "the timer stayed armed");

    // The parent is untouched: its file is there and its queue works.
    assert!(own_file(), "the child's drop removed the parent's counter file");
    assert!(wq.queue(&work));
    wq.flush().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 2);
}
