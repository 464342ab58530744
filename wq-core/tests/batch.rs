//! Workers take tiny items in batches (`pool/batch.rs`). A batch must never
//! hide work or accounting: an item that waits for one stashed behind it,
//! or for a thread flushing a queue whose records the worker holds, must
//! not deadlock, and `flush` and stats must see every finished item.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::wait_until;
use wq_core::{Detector, Flags, Runtime, Workqueue};

/// Long enough that only a deadlock reaches it.
const HANG: Duration = Duration::from_secs(30);

/// Queues an item that spins until released, so what the test queues next
/// piles up behind it and reaches the worker as a burst of tiny items.
fn hold(wq: &Workqueue) -> Arc<AtomicBool> {
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    wq.execute(move || {
        while !r.load(SeqCst) {
            std::hint::spin_loop();
        }
    })
    .unwrap();
    release
}

fn tiny(wq: &Workqueue, count: &Arc<AtomicUsize>, n: usize) {
    for _ in 0..n {
        let c = count.clone();
        wq.execute(move || {
            c.fetch_add(1, SeqCst);
        })
        .unwrap();
    }
}

/// More entries than a worker's batch holds (`MAX_BATCH` in
/// `pool/batch.rs`, 32).
const MORE_THAN_A_BATCH: usize = 40;

/// Item X waits (plainly, or inside `ignore_sleeps`) for item Y queued
/// right behind it. Each round queues them behind `k` tiny items, for
/// every `k` up to a batch and more, so X and Y share a stash at every
/// position in it; one pair at a time, since two waiters inside
/// `ignore_sleeps` may rightly take every worker an unbound pool runs.
fn waiter_and_its_helper_in_one_burst(wq: &Workqueue, ignore_sleeps: bool) {
    let count = Arc::new(AtomicUsize::new(0));
    for k in 0..MORE_THAN_A_BATCH {
        let release = hold(wq);
        tiny(wq, &count, k);
        let (tx, rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        wq.execute(move || {
            let wait = || rx.recv_timeout(HANG).is_ok();
            let ok = if ignore_sleeps { wq_core::ignore_sleeps(wait) } else { wait() };
            done_tx.send(ok).unwrap();
        })
        .unwrap();
        wq.execute(move || tx.send(()).unwrap()).unwrap();
        tiny(wq, &count, MORE_THAN_A_BATCH);
        release.store(true, SeqCst);
        let ok = done_rx.recv_timeout(HANG).unwrap_or(false);
        assert!(ok, "round {k}: the waiter never saw the item queued right behind it");
    }
    wq.flush().unwrap();
    assert_eq!(count.load(SeqCst), (0..MORE_THAN_A_BATCH).map(|k| k + MORE_THAN_A_BATCH).sum::<usize>());
}

#[test]
fn an_item_waiting_for_the_next_one_in_its_batch_gets_it_run() {
    for detector in [Detector::Auto, Detector::Procfs] {
        let rt = Runtime::builder().cpus([0]).detector(detector).publish(false).build().unwrap();
        let wq = rt.workqueue("burst").build().unwrap();
        waiter_and_its_helper_in_one_burst(&wq, false);
    }
}

/// In an unbound pool another worker would take Y off the worklist while
/// X sleeps inside `ignore_sleeps` (X still counts as running); a stash
/// must not keep Y from it.
#[test]
fn a_stash_behind_an_ignore_sleeps_wait_is_given_back_on_an_unbound_queue() {
    let rt = Runtime::builder().cpus([0]).publish(false).build().unwrap();
    let wq = rt.workqueue("burst").flags(Flags::UNBOUND).build().unwrap();
    waiter_and_its_helper_in_one_burst(&wq, true);
}

/// D, stashed behind tiny items of queue `a`, waits for a thread that
/// flushes `a`: the flush needs the records D's worker deferred.
#[test]
fn flushing_a_queue_whose_records_a_waiting_worker_holds_returns() {
    for detector in [Detector::Auto, Detector::Procfs] {
        let rt = Runtime::builder().cpus([0]).detector(detector).publish(false).build().unwrap();
        let a = rt.workqueue("a").build().unwrap();
        let b = rt.workqueue("b").build().unwrap();
        for round in 0..MORE_THAN_A_BATCH {
            let count = Arc::new(AtomicUsize::new(0));
            let release = hold(&a);
            tiny(&a, &count, 1 + round);
            let (flushed_tx, flushed_rx) = mpsc::channel::<()>();
            let (started_tx, started_rx) = mpsc::channel::<()>();
            let (done_tx, done_rx) = mpsc::channel();
            b.execute(move || {
                started_tx.send(()).unwrap();
                // Inside `ignore_sleeps` the wait is not worth another
                // worker: nothing but the flusher's settle, or the monitor
                // giving the stash back, applies the records before it.
                let ok = wq_core::ignore_sleeps(|| flushed_rx.recv_timeout(HANG).is_ok());
                done_tx.send(ok).unwrap();
            })
            .unwrap();
            tiny(&b, &count, 4);
            let a2 = a.clone();
            let flusher = thread::spawn(move || {
                started_rx.recv_timeout(HANG).unwrap();
                a2.flush().unwrap();
                flushed_tx.send(()).unwrap();
            });
            release.store(true, SeqCst);
            assert!(done_rx.recv_timeout(HANG).unwrap_or(false), "round {round}: the flush never returned");
            flusher.join().unwrap();
            b.flush().unwrap();
            assert_eq!(count.load(SeqCst), 5 + round);
        }
    }
}

/// Every flush sees every item queued before it, and the stats count
/// them, while workers batch a stream of tiny items from two threads.
#[test]
fn flushes_and_stats_see_every_item_of_a_batched_stream() {
    const PER_PRODUCER: usize = 50_000;
    let rt = Runtime::builder().publish(false).build().unwrap();
    for wq in [rt.workqueue("bound").build().unwrap(), rt.workqueue("unbound").flags(Flags::UNBOUND).build().unwrap()] {
        let ran = Arc::new(AtomicUsize::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (wq, ran, queued) = (wq.clone(), ran.clone(), queued.clone());
                thread::spawn(move || {
                    for _ in 0..PER_PRODUCER {
                        let r = ran.clone();
                        wq.execute(move || {
                            r.fetch_add(1, SeqCst);
                        })
                        .unwrap();
                        queued.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        let flusher = {
            let (wq, ran, queued, stop) = (wq.clone(), ran.clone(), queued.clone(), stop.clone());
            thread::spawn(move || {
                let mut flushes = 0;
                while !stop.load(SeqCst) {
                    let before = queued.load(SeqCst);
                    wq.flush().unwrap();
                    let seen = ran.load(SeqCst);
                    assert!(seen >= before, "flush returned with {seen} run of {before} queued before it");
                    flushes += 1;
                }
                flushes
            })
        };
        for p in producers {
            p.join().unwrap();
        }
        stop.store(true, SeqCst);
        assert!(flusher.join().unwrap() > 0);
        wq.flush().unwrap();
        let stats = wq.stats();
        assert_eq!(ran.load(SeqCst), 2 * PER_PRODUCER);
        assert_eq!(stats.total, 2 * PER_PRODUCER as u64, "{stats:?}");
        assert_eq!(stats.in_flight, 0, "{stats:?}");
    }
}

/// A worker times the tiny items of one queue in a stash together, and
/// charges the window to that queue when an item of another queue comes
/// next (`worker/meter.rs`). Queues A (near-empty items) and B (5 µs each)
/// share one pool in runs of 8: B's time must land on B, all of it, and A
/// must get only its own.
#[test]
fn batched_tiny_items_charge_their_cpu_time_to_their_own_queue() {
    const RUNS: usize = 60;
    const RUN_LEN: usize = 8;
    const B_ITEM: Duration = Duration::from_micros(5);
    let rt = Runtime::builder().cpus([0]).publish(false).build().unwrap();
    let a = rt.workqueue("empty").build().unwrap();
    let b = rt.workqueue("burning").build().unwrap();
    // Held on a third queue of the same pool, so A's items are all empty.
    let release = hold(&rt.workqueue("holder").build().unwrap());
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..RUNS {
        let r = ran.clone();
        tiny(&a, &r, RUN_LEN);
        for _ in 0..RUN_LEN {
            let r = ran.clone();
            b.execute(move || {
                common::burn(B_ITEM);
                r.fetch_add(1, SeqCst);
            })
            .unwrap();
        }
    }
    release.store(true, SeqCst);
    // Waiting for a flush would make the worker apply every record at
    // once, item by item, and take no windows: wait for the items instead.
    wait_until("every item ran", || ran.load(SeqCst) >= 2 * RUNS * RUN_LEN);
    a.flush().unwrap();
    b.flush().unwrap();
    let n = (RUNS * RUN_LEN) as u64;
    let burned = B_ITEM * (RUNS * RUN_LEN) as u32;
    // A window's time is added when it closes, just after its last item
    // finished: give the worker a moment to get there. (Half: a window
    // long enough to be charged CPU time rather than wall time can come
    // out short when the thread was preempted around it.)
    let deadline = std::time::Instant::now() + HANG;
    while b.stats().cpu_time < burned / 2 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.total, sb.total), (n, n), "{sa:?} {sb:?}");
    assert!(sb.cpu_time >= burned / 2, "B burned at least {burned:?} but was charged {:?}", sb.cpu_time);
    // A's items are empty: bookkeeping only, a tenth of B's here (debug
    // build, under load); windows that crossed queues gave it half.
    assert!(
        sa.cpu_time < sb.cpu_time / 3,
        "A's empty items were charged {:?} against B's {:?}: windows crossed queues",
        sa.cpu_time,
        sb.cpu_time
    );
}

/// A worker merges the records of a stash's items per queue and flush
/// colour (`pool/done.rs`). Two queues interleaved in short runs on one
/// pool, with panics and cancelled work items among them and one queue's
/// `max_active` below a stash, must still count every item on its own
/// queue and give back every active slot.
#[test]
fn merged_records_keep_each_queues_counts_and_slots() {
    const RUNS: usize = 40;
    const RUN_LEN: usize = 5;
    const LIMIT: usize = 8;
    let rt = Runtime::builder().cpus([0]).publish(false).build().unwrap();
    let a = rt.workqueue("limited").max_active(LIMIT as u32).build().unwrap();
    let b = rt.workqueue("plain").build().unwrap();
    let release = hold(&rt.workqueue("holder").build().unwrap());
    let ran = Arc::new(AtomicUsize::new(0));
    let mut panics = 0;
    let cancelled = wq_core::Work::new(|| panic!("a cancelled work item ran"));
    for run in 0..RUNS {
        for i in 0..RUN_LEN {
            let r = ran.clone();
            // Not `panic!`: `resume_unwind` skips the panic hook, so the
            // injected panics stay out of the test output.
            let panics_now = (run * RUN_LEN + i) % 7 == 0;
            panics += usize::from(panics_now);
            a.execute(move || {
                r.fetch_add(1, SeqCst);
                if panics_now {
                    std::panic::resume_unwind(Box::new("injected"));
                }
            })
            .unwrap();
        }
        tiny(&b, &ran, RUN_LEN);
        assert!(b.queue(&cancelled));
        assert!(cancelled.cancel());
    }
    release.store(true, SeqCst);
    wait_until("every item ran", || ran.load(SeqCst) >= 2 * RUNS * RUN_LEN);
    a.flush().unwrap();
    b.flush().unwrap();
    let n = (RUNS * RUN_LEN) as u64;
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.total, sa.panics, sa.in_flight), (n, panics as u64, 0), "{sa:?}");
    // Cancelled instances are discarded, not counted as run.
    assert_eq!((sb.total, sb.panics, sb.in_flight), (n, 0, 0), "{sb:?}");
    // Every active slot is free again: `max_active` items can all be
    // running at once (a slot lost to a merged record would keep one of
    // them inactive, and the barrier closed).
    let all_in = Arc::new(Barrier::new(LIMIT + 1));
    for _ in 0..LIMIT {
        let all_in = all_in.clone();
        a.execute(move || {
            wq_core::blocking(|| all_in.wait());
        })
        .unwrap();
    }
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        all_in.wait();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(HANG).expect("fewer than max_active items of the limited queue could run at once");
}
