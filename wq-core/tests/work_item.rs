//! The work item state machine through the public API.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::wait_until;
use wq_core::{Error, Runtime, Work, Workqueue};

fn counter_work() -> (Work, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    (
        Work::new(move || {
            n2.fetch_add(1, SeqCst);
        }),
        n,
    )
}

#[test]
fn queueing_a_pending_item_returns_false_and_it_runs_once() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("pending").ordered().build().unwrap();
    // Hold the ordered queue so the item stays pending.
    let (tx, rx) = mpsc::channel::<()>();
    let gate = wq.submit(move || rx.recv().unwrap()).unwrap();
    let (work, runs) = counter_work();
    assert!(wq.queue(&work));
    assert!(work.is_pending());
    assert!(!wq.queue(&work), "second queue of a pending item");
    assert!(!wq.queue(&work));
    tx.send(()).unwrap();
    gate.wait().unwrap();
    work.flush().unwrap();
    assert_eq!(runs.load(SeqCst), 1);
    assert!(!work.is_pending());
    // Idle again: queueing works and runs it again.
    assert!(wq.queue(&work));
    work.flush().unwrap();
    assert_eq!(runs.load(SeqCst), 2);
}

/// An item queued from several threads on several CPUs while it runs never
/// runs concurrently with itself, and every accepted queueing runs exactly once.
#[test]
fn an_item_never_runs_concurrently_with_itself() {
    let rt = Runtime::builder().build().unwrap();
    let wqs = [rt.workqueue("a").build().unwrap(), rt.workqueue("b").build().unwrap()];
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let (i, o, r) = (inside.clone(), overlaps.clone(), runs.clone());
    let work = Work::new(move || {
        if i.fetch_add(1, SeqCst) != 0 {
            o.fetch_add(1, SeqCst);
        }
        r.fetch_add(1, SeqCst);
        for _ in 0..200 {
            std::hint::spin_loop();
        }
        i.fetch_sub(1, SeqCst);
    });
    let cpus = rt.cpus().to_vec();
    let accepted: usize = thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (work, wqs, cpus) = (&work, &wqs, &cpus);
                s.spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let (mut ok, mut k) = (0, 0);
                    while ok < 1_500 {
                        assert!(Instant::now() < deadline, "producer {t} stalled at {ok} accepted queueings");
                        let wq = &wqs[(t + k) % 2];
                        let cpu = cpus[(t + k / 7) % cpus.len()];
                        if wq.queue_on(cpu, work).unwrap() {
                            ok += 1;
                        } else {
                            thread::yield_now();
                        }
                        k += 1;
                    }
                    ok
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    for wq in &wqs {
        wq.flush().unwrap();
    }
    work.flush().unwrap();
    assert_eq!(overlaps.load(SeqCst), 0, "the item ran concurrently with itself");
    assert_eq!(runs.load(SeqCst), accepted, "every accepted queueing runs exactly once");
}

#[test]
fn an_item_may_requeue_itself() {
    let wq = Workqueue::builder("self-requeue").build().unwrap();
    let me: Arc<OnceLock<Work>> = Arc::new(OnceLock::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let (me2, runs2, wq2) = (me.clone(), runs.clone(), wq.clone());
    let work = Work::new(move || {
        if runs2.fetch_add(1, SeqCst) + 1 < 10 {
            assert!(wq2.queue(me2.get().unwrap()), "requeue from inside must succeed");
        }
    });
    me.set(work.clone()).unwrap();
    assert!(wq.queue(&work));
    wait_until("ten runs", || runs.load(SeqCst) == 10);
    wq.flush().unwrap();
    assert_eq!(runs.load(SeqCst), 10);
}

#[test]
fn cancel_takes_back_a_pending_item() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("cancel").ordered().build().unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let gate = wq.submit(move || rx.recv().unwrap()).unwrap();
    let (work, runs) = counter_work();
    assert!(wq.queue(&work));
    assert!(work.cancel());
    assert!(!work.cancel(), "nothing left to cancel");
    assert!(!work.is_pending());
    tx.send(()).unwrap();
    gate.wait().unwrap();
    wq.flush().unwrap();
    assert_eq!(runs.load(SeqCst), 0);
    assert!(wq.queue(&work), "a cancelled item can be queued again");
    wq.flush().unwrap();
    assert_eq!(runs.load(SeqCst), 1);
}

#[test]
fn cancel_sync_waits_for_the_running_instance_and_blocks_requeueing() {
    let wq = Workqueue::builder("cancel-sync").build().unwrap();
    let me: Arc<OnceLock<Work>> = Arc::new(OnceLock::new());
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let requeued = Arc::new(AtomicBool::new(true));
    let (me2, s2, f2, q2, wq2) = (me.clone(), started.clone(), finished.clone(), requeued.clone(), wq.clone());
    let work = Work::new(move || {
        s2.fetch_add(1, SeqCst);
        wq_core::blocking(|| thread::sleep(Duration::from_millis(100)));
        // During cancel_sync the item is disabled: this requeue must fail.
        q2.store(wq2.queue(me2.get().unwrap()), SeqCst);
        f2.fetch_add(1, SeqCst);
    });
    me.set(work.clone()).unwrap();
    assert!(wq.queue(&work));
    wait_until("the item started", || started.load(SeqCst) == 1);
    assert!(!work.cancel_sync().unwrap(), "it was running, not pending");
    assert_eq!(finished.load(SeqCst), 1, "cancel_sync returned before the item finished");
    assert!(!requeued.load(SeqCst), "a requeue during cancel_sync succeeded");
    assert!(!work.is_pending() && !work.is_running());
    thread::sleep(Duration::from_millis(50));
    wq.flush().unwrap();
    assert_eq!(started.load(SeqCst), 1, "the item ran again after cancel_sync");
    // Enabled again afterwards.
    assert!(wq.queue(&work));
    wait_until("second run", || finished.load(SeqCst) == 2);
    work.cancel_sync().unwrap();
}

#[test]
fn flush_and_cancel_sync_from_inside_the_item_are_refused() {
    let wq = Workqueue::builder("self-wait").build().unwrap();
    let me: Arc<OnceLock<Work>> = Arc::new(OnceLock::new());
    let (tx, rx) = mpsc::channel();
    let me2 = me.clone();
    let work = Work::new(move || {
        let w = me2.get().unwrap();
        tx.send((w.flush().map(|_| ()), w.cancel_sync().map(|_| ()))).unwrap();
    });
    me.set(work.clone()).unwrap();
    wq.queue(&work);
    let (flush, cancel) = rx.recv_timeout(Duration::from_secs(20)).expect("the item deadlocked");
    assert!(matches!(flush, Err(Error::WouldDeadlock(_))), "{flush:?}");
    assert!(matches!(cancel, Err(Error::WouldDeadlock(_))), "{cancel:?}");
}

#[test]
fn flush_of_an_idle_item_returns_at_once() {
    let (work, _) = counter_work();
    assert!(!work.flush().unwrap());
    assert!(!work.cancel_sync().unwrap());
}

/// `flush` of a running item waits for that run, not for the item to go
/// idle: when an instance queued meanwhile was handed to the running worker
/// (`work/README.md`), `RUNNING` never clears between the two runs, and
/// `flush` must still return once the first run ended.
#[test]
fn flush_returns_after_the_run_it_saw_even_when_a_handed_off_run_follows() {
    const PATIENCE: Duration = Duration::from_secs(10);
    let rt = common::one_cpu_runtime();
    let wq = rt.workqueue("hand-off").build().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let runs = AtomicUsize::new(0);
    let work = Work::new(move || {
        started_tx.send(runs.fetch_add(1, SeqCst) + 1).unwrap();
        // The hook lets the pool start another worker, which dequeues the
        // next instance and hands it to this one.
        wq_core::blocking(|| release_rx.lock().unwrap().recv_timeout(PATIENCE).expect("never released"));
    });
    assert!(wq.queue(&work));
    assert_eq!(started_rx.recv_timeout(PATIENCE), Ok(1));
    let (flushed_tx, flushed_rx) = mpsc::channel();
    let w = work.clone();
    thread::spawn(move || flushed_tx.send(w.flush()).unwrap());
    thread::sleep(common::UNIT);
    assert!(wq.queue(&work), "the running item is not pending");
    // Time for the second worker to dequeue the instance and park it.
    thread::sleep(common::UNIT * 2);
    release_tx.send(()).unwrap();
    assert_eq!(started_rx.recv_timeout(PATIENCE), Ok(2));
    let flushed = flushed_rx.recv_timeout(PATIENCE);
    release_tx.send(()).unwrap();
    let flushed = flushed.expect("flush waited for the run queued after it");
    assert!(flushed.unwrap(), "flush saw nothing to wait for");
    work.flush().unwrap();
}

/// A run's worker takes the next instance queued meanwhile straight from
/// the hand-off slot, `RUNNING` staying set. A `flush` whose look at the
/// state falls between that claim and the end of the run before it must
/// still wait for the claimed instance, which was queued before the flush.
/// The item requeues itself on alternating CPUs (so other pools' workers
/// hand it back), while a thread flushes at random moments and checks
/// that every instance accepted before each flush has started by its end.
#[test]
fn flush_waits_for_an_instance_claimed_from_the_hand_off_slot() {
    const FOR: Duration = Duration::from_millis(1500);
    let rt = Runtime::builder().publish(false).build().unwrap();
    let cpus = rt.cpus().to_vec();
    let wq = rt.workqueue("hand-off-flush").build().unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let me: Arc<OnceLock<Work>> = Arc::new(OnceLock::new());
    let (s, a, st, m, q) = (started.clone(), accepted.clone(), stop.clone(), me.clone(), wq.clone());
    let work = Work::new(move || {
        let run = s.fetch_add(1, SeqCst);
        // Long enough for the other pool's worker to find the item running.
        let until = Instant::now() + Duration::from_micros(3);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        if !st.load(SeqCst) && matches!(q.queue_on(cpus[run % cpus.len()], m.get().unwrap()), Ok(true)) {
            a.fetch_add(1, SeqCst);
        }
    });
    me.set(work.clone()).unwrap();
    assert!(wq.queue(&work));
    let deadline = Instant::now() + FOR;
    let mut flushes = 0u64;
    while Instant::now() < deadline {
        let owed = accepted.load(SeqCst);
        work.flush().unwrap();
        let ran = started.load(SeqCst);
        assert!(ran >= owed, "flush {flushes} returned with {ran} instances started of {owed} queued before it");
        flushes += 1;
        for _ in 0..flushes % 64 {
            std::hint::spin_loop();
        }
    }
    stop.store(true, SeqCst);
    work.cancel_sync().unwrap();
    assert!(flushes > 0);
}

/// `flush` of a pending item waits for that instance's run to end, even when
/// a newer instance is queued and cancelled while it runs: that cancel
/// retires the newer generation, which says nothing of the older run.
#[test]
fn flush_of_a_pending_item_outlasts_a_newer_instance_cancelled_while_it_runs() {
    const PATIENCE: Duration = Duration::from_secs(10);
    let rt = common::one_cpu_runtime();
    let wq = rt.workqueue("cancel-newer").ordered().build().unwrap();
    // Hold the ordered queue so that the flush finds the item pending.
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate = wq.submit(move || gate_rx.recv_timeout(PATIENCE).expect("gate never opened")).unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let work = Work::new(move || {
        started_tx.send(()).unwrap();
        release_rx.lock().unwrap().recv_timeout(PATIENCE).expect("never released");
    });
    assert!(wq.queue(&work));
    let (flushed_tx, flushed_rx) = mpsc::channel();
    let w = work.clone();
    thread::spawn(move || flushed_tx.send(w.flush()).unwrap());
    thread::sleep(common::UNIT);
    gate_tx.send(()).unwrap();
    gate.wait().unwrap();
    started_rx.recv_timeout(PATIENCE).expect("the item never started");
    assert!(wq.queue(&work), "the running item is not pending");
    assert!(work.cancel(), "the newer instance was pending");
    assert!(
        matches!(flushed_rx.recv_timeout(common::UNIT * 2), Err(mpsc::RecvTimeoutError::Timeout)),
        "flush returned while the instance it waited for still ran"
    );
    release_tx.send(()).unwrap();
    let flushed = flushed_rx.recv_timeout(PATIENCE).expect("flush never returned");
    assert!(flushed.unwrap(), "flush saw nothing to wait for");
    assert!(!work.is_running());
}

/// A worker that runs an instance handed off to it applies the record of
/// the run it just finished first: the next instance's user code may flush
/// the first run's queue, which waited for that record for ever.
#[test]
fn a_handed_off_instance_can_flush_the_queue_of_the_run_before_it() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let q2 = rt.workqueue("q2").build().unwrap();
    let q1 = rt.workqueue("q1").flags(wq_core::Flags::HIGHPRI).build().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (flushed_tx, flushed_rx) = mpsc::channel::<()>();
    let (started_tx, go_rx, flushed_tx) = (Mutex::new(started_tx), Mutex::new(go_rx), Mutex::new(flushed_tx));
    let q2c = q2.clone();
    let r = runs.clone();
    let work = Work::new(move || {
        if r.fetch_add(1, SeqCst) == 0 {
            // First run, from q2 on the normal pool: wait until the q1
            // instance has been parked behind it.
            started_tx.lock().unwrap().send(()).unwrap();
            go_rx.lock().unwrap().recv().unwrap();
        } else {
            // Second run, the q1 instance handed to the same worker.
            q2c.flush().unwrap();
            flushed_tx.lock().unwrap().send(()).unwrap();
        }
    });
    assert!(q2.queue(&work));
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // The highpri pool's worker dequeues it, finds it running, parks it.
    assert!(q1.queue(&work));
    thread::sleep(Duration::from_millis(300));
    go_tx.send(()).unwrap();
    let ok = flushed_rx.recv_timeout(Duration::from_secs(10)).is_ok();
    if !ok {
        // Keep the stuck worker's captures from being dropped by unwinding.
        std::mem::forget((work, q1, q2, rt));
    }
    assert!(ok, "q2.flush() from the handed-off q1 instance never returned (q2 had nothing left to run)");
}
