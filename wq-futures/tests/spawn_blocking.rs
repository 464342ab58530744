//! Blocking closures sent with `WorkqueueExt::spawn_blocking`: the one-item
//! path behind `wq_tokio_compat::spawn_blocking`.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::DropFlag;
use wq_core::Workqueue;
use wq_futures::{block_on, WorkqueueExt};

fn queue(name: &str) -> Workqueue {
    Workqueue::builder(name).build().expect("queue builds")
}

#[test]
fn every_call_runs_once_and_every_result_comes_back() {
    let wq = Workqueue::builder("fut_call_count").flags(wq_core::Flags::UNBOUND).build().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let submitters: Vec<_> = (0..2u64)
        .map(|s| {
            let wq = wq.clone();
            let runs = runs.clone();
            thread::spawn(move || {
                let handles: Vec<_> = (0..5_000u64)
                    .map(|i| {
                        let runs = runs.clone();
                        wq.spawn_blocking(move || {
                            runs.fetch_add(1, Ordering::Relaxed);
                            s * 1_000_000 + i
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| block_on(h).expect("call ran")).sum::<u64>()
            })
        })
        .collect();
    let total: u64 = submitters.into_iter().map(|t| t.join().unwrap()).sum();
    let expected: u64 = (0..5_000u64).sum::<u64>() * 2 + 5_000 * 1_000_000;
    assert_eq!(total, expected, "every handle gave its own call's value");
    assert_eq!(runs.load(Ordering::SeqCst), 10_000, "every call ran exactly once");
}

/// Detached and awaited calls from two threads on one unbound queue, so
/// allocations handed back by workers (`wq_core::recycle`) serve later
/// calls: every awaited call still gets its own result, and every result,
/// taken or not, is dropped exactly once.
#[test]
fn recycled_calls_keep_their_results_apart() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct Tracked(u64);
    impl Drop for Tracked {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
    let wq = Workqueue::builder("fut_call_recycled").flags(wq_core::Flags::UNBOUND).build().unwrap();
    let per_thread = 20_000u64;
    let submitters: Vec<_> = (0..2u64)
        .map(|s| {
            let wq = wq.clone();
            thread::spawn(move || {
                let mut kept = Vec::new();
                for i in 0..per_thread {
                    let id = s * per_thread + i;
                    let handle = wq.spawn_blocking(move || Tracked(id));
                    if i % 3 == 0 {
                        kept.push((id, handle));
                    }
                }
                for (id, handle) in kept {
                    assert_eq!(block_on(handle).expect("call ran").0, id, "a handle got another call's result");
                }
            })
        })
        .collect();
    submitters.into_iter().for_each(|t| t.join().unwrap());
    wq.flush().unwrap();
    assert_eq!(DROPS.load(Ordering::SeqCst), 2 * per_thread as usize, "a result was dropped twice or kept");
}

/// A handle polled (its waker registered) and then dropped leaves its
/// waker in the call; the worker that keeps the call's allocation for reuse
/// (`wq_core::recycle`) must drop that waker first.
#[test]
fn a_recycled_call_keeps_no_waker_of_a_dropped_handle() {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let wq = Workqueue::builder("fut_call_recycled_waker").flags(wq_core::Flags::UNBOUND).build().unwrap();
    let waker_alive = Arc::new(Noop);
    let waker = std::task::Waker::from(waker_alive.clone());
    let (release, gate) = mpsc::channel::<()>();
    let mut handle = wq.spawn_blocking(move || gate.recv().unwrap());
    let pending = std::pin::Pin::new(&mut handle).poll(&mut std::task::Context::from_waker(&waker));
    assert!(pending.is_pending());
    drop((handle, waker));
    assert_eq!(Arc::strong_count(&waker_alive), 2, "the call holds the registered waker");
    release.send(()).unwrap();
    wq.flush().unwrap();
    assert_eq!(Arc::strong_count(&waker_alive), 1, "the finished, detached call still holds the waker");
}

#[test]
fn abort_through_an_abort_handle_cancels_a_queued_call_and_drops_its_closure() {
    // Ordered: one call at a time, whichever CPU queues it. (A bound
    // queue's max_active is per CPU: a test thread that moved to the other
    // CPU between the two calls saw the second one run at once.)
    let wq = Workqueue::builder("fut_call_abort").ordered().build().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let blocker = wq.spawn_blocking(move || {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    started_rx.recv().unwrap();
    // This call waits behind the blocker.
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let ran = Arc::new(AtomicBool::new(false));
    let ran2 = ran.clone();
    let queued = wq.spawn_blocking(move || {
        let _flag = &flag;
        ran2.store(true, Ordering::SeqCst);
    });
    let abort = queued.abort_handle();
    assert!(!abort.is_finished());
    abort.abort();
    assert!(abort.is_finished() && queued.is_finished(), "a cancelled call counts as finished");
    assert!(dropped.load(Ordering::SeqCst), "the cancelled closure is dropped at once");
    release_tx.send(()).unwrap();
    block_on(blocker).unwrap();
    assert!(block_on(queued).unwrap_err().is_cancelled());
    wq.flush().unwrap();
    assert!(!ran.load(Ordering::SeqCst), "a cancelled call never runs");
}

#[test]
fn a_refused_call_is_dropped_unrun_and_reports_cancelled() {
    let wq = queue("fut_call_refused");
    wq.destroy().unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let handle = wq.spawn_blocking(move || drop(flag));
    assert!(dropped.load(Ordering::SeqCst));
    assert!(handle.is_finished());
    assert!(block_on(handle).unwrap_err().is_cancelled());
}

/// A result whose `Drop` panics.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("dropping the result");
    }
}

#[test]
fn a_detached_result_whose_drop_panics_leaves_the_worker_serving() {
    let wq = queue("fut_call_detached");
    drop(wq.spawn_blocking(|| PanicOnDrop));
    wq.flush().unwrap();
    assert_eq!(block_on(wq.spawn_blocking(|| 7)).unwrap(), 7);
}

#[test]
fn a_finished_result_whose_drop_panics_is_dropped_quietly_with_its_handle() {
    let wq = queue("fut_call_finished_drop");
    let handle = wq.spawn_blocking(|| PanicOnDrop);
    // After the flush the worker has let go of the call: the handle's
    // reference is the last, and dropping it drops the stored result.
    wq.flush().unwrap();
    assert!(handle.is_finished());
    drop(handle);
    assert_eq!(block_on(wq.spawn_blocking(|| 7)).unwrap(), 7);
}

#[test]
fn a_panic_and_its_payload_come_back() {
    let wq = queue("fut_call_panic");
    let err = block_on(wq.spawn_blocking(|| -> u8 { std::panic::panic_any(42u32) })).unwrap_err();
    assert!(err.is_panic());
    assert_eq!(*err.into_panic().downcast::<u32>().unwrap(), 42);
}

#[test]
fn an_awaiting_task_is_woken_by_the_result() {
    let wq = Workqueue::builder("fut_call_wake").flags(wq_core::Flags::UNBOUND).build().unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let b = barrier.clone();
    let handle = wq.spawn_blocking(move || {
        b.wait();
        thread::sleep(Duration::from_millis(20));
        "late"
    });
    // The handle is polled (and parks its waker) before the call finishes.
    let waiter = thread::spawn(move || block_on(handle));
    barrier.wait();
    assert_eq!(waiter.join().unwrap().unwrap(), "late");
}

#[test]
fn racing_aborts_either_cancel_a_call_or_let_it_run_never_both() {
    const CALLS: usize = 4_000;
    let wq = Workqueue::builder("fut_call_race").flags(wq_core::Flags::UNBOUND).build().unwrap();
    let ran: Arc<Vec<AtomicUsize>> = Arc::new((0..CALLS).map(|_| AtomicUsize::new(0)).collect());
    let handles: Vec<_> = (0..CALLS)
        .map(|i| {
            let ran = ran.clone();
            wq.spawn_blocking(move || {
                ran[i].fetch_add(1, Ordering::SeqCst);
                i
            })
        })
        .collect();
    // Abort every other call from another thread while the workers take
    // them: some aborts land before the start, some after.
    let aborts: Vec<_> = handles.iter().step_by(2).map(|h| h.abort_handle()).collect();
    let aborter = thread::spawn(move || aborts.iter().for_each(|a| a.abort()));
    let mut cancelled = 0;
    for (i, handle) in handles.into_iter().enumerate() {
        match block_on(handle) {
            Ok(v) => assert_eq!(v, i, "call {i} gave another call's value"),
            Err(err) => {
                assert!(err.is_cancelled() && i % 2 == 0, "call {i}: unexpected {err}");
                cancelled += 1;
            }
        }
    }
    aborter.join().unwrap();
    wq.flush().unwrap();
    let runs: usize = ran.iter().map(|r| r.load(Ordering::SeqCst)).sum();
    assert!(ran.iter().all(|r| r.load(Ordering::SeqCst) <= 1), "a call ran twice");
    assert_eq!(runs + cancelled, CALLS, "every call either ran once or was cancelled");
}
