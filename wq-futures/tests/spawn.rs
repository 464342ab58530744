//! Spawning, joining, aborting and detaching tasks on workqueues.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::time::Duration;

use common::DropFlag;
use futures::channel::oneshot;
use futures::task::SpawnExt;
use wq_core::{Error, Workqueue};
use wq_futures::{block_on, unblock, unblock_on, JoinError, WorkqueueExt};

fn queue(name: &str) -> Workqueue {
    Workqueue::builder(name).build().expect("queue builds")
}

/// Yields to the executor `n` times before completing, so a task takes
/// several polls (several work items).
struct YieldN(u32);

impl Future for YieldN {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn ten_thousand_tasks_complete_with_their_results() {
    let wq = queue("t_many_tasks");
    let handles: Vec<_> = (0..10_000u64)
        .map(|i| {
            wq.spawn(async move {
                // Every third task takes several polls.
                if i % 3 == 0 {
                    YieldN(2).await;
                }
                i * 2
            })
        })
        .collect();
    let results = block_on(async {
        let mut out = Vec::with_capacity(handles.len());
        for handle in handles {
            out.push(handle.await.expect("task ran"));
        }
        out
    });
    assert_eq!(results.len(), 10_000);
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r, i as u64 * 2);
    }
}

#[test]
fn panic_becomes_join_error_and_later_tasks_still_run() {
    let wq = queue("t_panics");
    let err = block_on(wq.spawn(async {
        YieldN(1).await;
        panic!("deliberate test panic");
    }))
    .expect_err("task panicked");
    assert!(err.is_panic());
    assert!(!err.is_cancelled());
    assert!(err.to_string().contains("deliberate test panic"), "{err}");
    let payload = err.into_panic();
    assert_eq!(payload.downcast_ref::<&str>().copied(), Some("deliberate test panic"));
    let later: Vec<_> = (0..100u32).map(|i| wq.spawn(async move { i + 1 })).collect();
    let sum: u32 = block_on(async {
        let mut sum = 0;
        for h in later {
            sum += h.await.unwrap();
        }
        sum
    });
    assert_eq!(sum, (1..=100).sum());
}

#[test]
fn abort_before_first_poll_is_cancelled_and_never_polls() {
    // An ordered queue runs one poll at a time: the first task holds it
    // until released, so the second cannot have been polled when aborted.
    let wq = Workqueue::builder("t_abort_first").ordered().build().unwrap();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let blocker = wq.spawn(async move {
        started_tx.send(()).unwrap();
        wq_core::blocking(|| release_rx.recv().unwrap());
    });
    started_rx.recv().unwrap();
    let polled = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let victim = {
        let polled = Arc::clone(&polled);
        let guard = DropFlag(Arc::clone(&dropped));
        wq.spawn(async move {
            let _guard = guard;
            polled.store(true, Ordering::SeqCst);
            7
        })
    };
    victim.abort();
    release_tx.send(()).unwrap();
    block_on(blocker).unwrap();
    let err = block_on(victim).expect_err("aborted task gives an error");
    assert!(err.is_cancelled(), "{err:?}");
    assert!(!err.is_panic());
    assert!(!polled.load(Ordering::SeqCst), "aborted task was polled");
    assert!(dropped.load(Ordering::SeqCst), "aborted future was not dropped");
    assert!(err.try_into_panic().is_err());
}

#[test]
fn abort_of_a_waiting_task_drops_its_future() {
    let wq = queue("t_abort_waiting");
    let dropped = Arc::new(AtomicBool::new(false));
    let (_never_tx, never_rx) = oneshot::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let guard = DropFlag(Arc::clone(&dropped));
    let handle = wq.spawn(async move {
        let _guard = guard;
        started_tx.send(()).unwrap();
        let _ = never_rx.await;
    });
    started_rx.recv().unwrap();
    let abort = handle.abort_handle();
    assert!(!abort.is_finished());
    abort.abort();
    let err = block_on(handle).unwrap_err();
    assert!(err.is_cancelled());
    assert!(dropped.load(Ordering::SeqCst));
    assert!(abort.is_finished());
}

#[test]
fn abort_after_completion_keeps_the_output() {
    let wq = queue("t_abort_late");
    let handle = wq.spawn(async { 5 });
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    handle.abort();
    assert_eq!(block_on(handle).unwrap(), 5);
}

#[test]
fn dropping_the_handle_detaches_the_task() {
    let wq = queue("t_detach");
    let (gate_tx, gate_rx) = oneshot::channel::<u32>();
    let (done_tx, done_rx) = mpsc::channel::<u32>();
    let handle = wq.spawn(async move {
        let v = gate_rx.await.unwrap();
        done_tx.send(v + 1).unwrap();
    });
    drop(handle);
    gate_tx.send(41).unwrap();
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(42));
}

#[test]
fn refused_tasks_complete_as_cancelled() {
    let wq = queue("t_destroyed");
    // A task waiting when the queue is destroyed: its wake-up is refused.
    let (wake_tx, wake_rx) = oneshot::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let waiting = wq.spawn(async move {
        started_tx.send(()).unwrap();
        wake_rx.await.unwrap();
        1
    });
    started_rx.recv().unwrap();
    wq.destroy().expect("destroy an idle queue");
    wake_tx.send(()).unwrap();
    let err = block_on(waiting).expect_err("woken after destroy");
    assert!(err.is_cancelled(), "{err:?}");

    // New tasks: `spawn` reports through the handle, `try_spawn` at once.
    let err = block_on(wq.spawn(async { 2 })).unwrap_err();
    assert!(err.is_cancelled());
    match wq.try_spawn(async { 3 }) {
        Err(Error::Destroyed { .. }) => {}
        other => panic!("expected Error::Destroyed, got {:?}", other.map(drop)),
    }
    let spawn_err = SpawnExt::spawn(&wq.executor(), async {}).unwrap_err();
    assert!(spawn_err.is_shutdown());
}

#[test]
fn spawn_trait_runs_tasks_on_the_queue() {
    let wq = queue("t_spawn_trait");
    let exec = wq.executor();
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<()>();
    for _ in 0..50 {
        let count = Arc::clone(&count);
        let tx = tx.clone();
        // Through the `Spawn` trait, as a library taking a spawner would.
        SpawnExt::spawn(&exec, async move {
            assert!(wq_core::is_worker_thread(), "Spawn task ran off the workqueue");
            count.fetch_add(1, Ordering::SeqCst);
            tx.send(()).unwrap();
        })
        .unwrap();
    }
    for _ in 0..50 {
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    assert_eq!(count.load(Ordering::SeqCst), 50);
    assert!(format!("{exec:?}").contains("t_spawn_trait"));
}

#[test]
fn block_on_inside_a_task_waits_for_another_task() {
    let wq = queue("t_nested_block_on");
    let inner_wq = wq.clone();
    let out = block_on(wq.spawn(async move {
        let inner = inner_wq.spawn(async { 20 });
        block_on(inner).unwrap() + 1
    }));
    assert_eq!(out.unwrap(), 21);
}

#[test]
fn unblock_returns_results_and_resumes_panics() {
    let v = block_on(unblock(|| {
        std::thread::sleep(Duration::from_millis(20));
        "done"
    }));
    assert_eq!(v, "done");
    let caught = std::panic::catch_unwind(|| block_on(unblock(|| panic!("unblock panic"))));
    let payload = caught.expect_err("the panic is resumed in the awaiting thread");
    assert_eq!(payload.downcast_ref::<&str>().copied(), Some("unblock panic"));
}

#[test]
fn unblock_on_a_destroyed_queue_still_runs_the_closure() {
    let wq = queue("t_unblock_destroyed");
    wq.destroy().unwrap();
    let fut = unblock_on(&wq, || 99);
    assert!(format!("{fut:?}").contains("refused"));
    assert_eq!(block_on(fut), 99);
}

#[test]
fn join_error_fits_boxed_errors() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<JoinError>();
    assert_send_sync::<wq_futures::JoinHandle<u8>>();
    let wq = queue("t_error_box");
    let err = block_on(wq.spawn(async { panic!("boxed") })).unwrap_err();
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
    assert!(boxed.to_string().contains("boxed"));
}

/// Panics when dropped (unless already unwinding).
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("deliberate panic in a future's drop");
        }
    }
}

/// Ready at once; its field panics when the future is dropped.
struct ReadyWithPanickingDrop(#[allow(dead_code)] PanicOnDrop);

impl Future for ReadyWithPanickingDrop {
    type Output = u32;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<u32> {
        Poll::Ready(5)
    }
}

/// A future whose own drop panics, once it completed (dropped on the
/// worker) or when its queue refuses it (dropped with the refused poll),
/// neither kills the process nor the worker: as in tokio, a completed
/// future's drop panic is the task's panic.
#[test]
fn a_future_whose_drop_panics_is_a_join_error_not_an_abort() {
    let wq = queue("t_drop_panics");
    let err = block_on(wq.spawn(ReadyWithPanickingDrop(PanicOnDrop))).expect_err("its drop panicked");
    assert!(err.is_panic(), "{err:?}");
    assert!(err.to_string().contains("deliberate panic in a future's drop"), "{err}");
    assert_eq!(block_on(wq.spawn(async { 6 })).unwrap(), 6, "the worker survived");
    wq.destroy().unwrap();
    let refused = block_on(wq.spawn(ReadyWithPanickingDrop(PanicOnDrop))).expect_err("refused");
    assert!(refused.is_cancelled(), "{refused:?}");
}

/// A value whose drop panics (unless already unwinding).
struct OutputPanicsOnDrop;

impl Drop for OutputPanicsOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("dropping the task's output");
        }
    }
}

/// A finished task's output is dropped with its handle; a panic in that
/// drop is swallowed, as tokio's `JoinHandle` does (it unwound into the
/// caller).
#[test]
fn dropping_a_finished_handle_whose_output_drop_panics_does_not_unwind() {
    let wq = queue("t_out_drop");
    let handle = wq.spawn(async { OutputPanicsOnDrop });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !handle.is_finished() {
        assert!(std::time::Instant::now() < deadline, "the task did not finish");
        std::thread::sleep(Duration::from_millis(1));
    }
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(handle)));
    assert!(dropped.is_ok(), "dropping a finished JoinHandle unwound into the caller");
}

/// A detached task's output is dropped on the worker where async-task
/// aborts the process on a panic: it must be dropped quietly there. Run in
/// a child process of this test binary, since the bug killed the process.
#[test]
fn a_detached_task_whose_output_drop_panics_does_not_abort_the_process() {
    const CHILD: &str = "WQ_FUTURES_DETACHED_OUTPUT_CHILD";
    const NAME: &str = "a_detached_task_whose_output_drop_panics_does_not_abort_the_process";
    if std::env::var_os(CHILD).is_some() {
        let wq = queue("t_detached_out");
        let (gate_tx, gate_rx) = oneshot::channel::<()>();
        drop(wq.spawn(async move {
            let _ = gate_rx.await;
            OutputPanicsOnDrop
        }));
        gate_tx.send(()).unwrap();
        wq.flush().unwrap();
        assert_eq!(block_on(wq.spawn(async { 7 })).unwrap(), 7, "the worker survived");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "child: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// Keeps the waker of every poll in `slot`, and never completes.
struct StoresWaker {
    slot: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    polled: Option<mpsc::Sender<()>>,
    _dropped: DropFlag,
}

impl Future for StoresWaker {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        *self.slot.lock().unwrap() = Some(cx.waker().clone());
        if let Some(tx) = self.polled.take() {
            let _ = tx.send(());
        }
        Poll::Pending
    }
}

/// A detached task that nobody can wake any more (its handle and every
/// waker its future gave out are gone) is dropped, as async-task drops it:
/// the task's own waker, kept for `abort`, kept it (and its queue) alive
/// for ever. With an `AbortHandle` left, it stays abortable.
#[test]
fn a_detached_task_with_no_waker_left_is_dropped() {
    let wq = queue("t_unwakeable");
    for keep_abort_handle in [false, true] {
        let dropped = Arc::new(AtomicBool::new(false));
        let slot = Arc::new(std::sync::Mutex::new(None));
        let (polled_tx, polled_rx) = mpsc::channel();
        let task =
            StoresWaker { slot: Arc::clone(&slot), polled: Some(polled_tx), _dropped: DropFlag(Arc::clone(&dropped)) };
        let handle = wq.spawn(task);
        let abort = keep_abort_handle.then(|| handle.abort_handle());
        drop(handle);
        polled_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        wq.flush().unwrap();
        drop(slot.lock().unwrap().take());
        if let Some(abort) = abort {
            assert!(!dropped.load(Ordering::SeqCst), "an abortable task was dropped");
            abort.abort();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !dropped.load(Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "the task's future was never dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
