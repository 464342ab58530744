//! The short version of the stress test in `examples/stress/` (same code,
//! a few seconds), and targeted races that exact counting cannot see.

#[path = "../examples/stress/main.rs"]
#[allow(dead_code)]
mod stress;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use wq_core::{DelayedWork, Error, Runtime, Work};

#[test]
fn short_stress_run_loses_and_duplicates_nothing() {
    let cfg = stress::Config {
        duration: Duration::from_secs(3),
        producers: 3,
        queues: 6,
        hang_timeout: Duration::from_secs(30),
        ..stress::Config::default()
    };
    let report = stress::run(&cfg);
    println!("{}", report.summary());
    assert!(report.ok(), "{}\n{}", report.summary(), report.messages.join("\n"));
    // The run must have exercised every path it claims to check.
    assert!(report.accepted > 1_000 && report.run > 1_000, "{}", report.summary());
    assert!(report.cancelled > 0 && report.refused > 0, "{}", report.summary());
}

#[test]
fn stress_arguments_are_checked() {
    let args = |a: &[&str]| stress::Config::from_args(a.iter().map(|s| s.to_string()));
    let cfg = args(&["--seconds", "2.5", "--seed", "9"]).unwrap();
    assert_eq!((cfg.duration, cfg.seed), (Duration::from_millis(2500), 9));
    for bad in [&["--seconds"][..], &["--seconds", "-1"], &["--seconds", "inf"], &["--frobs", "1"], &["--seed", "x"]] {
        assert!(args(bad).is_err(), "{bad:?} accepted");
    }
}

/// How long each targeted race runs: long enough to hit a window of a few
/// hundred nanoseconds thousands of times on a loaded 2-CPU machine.
const RACE_TIME: Duration = Duration::from_millis(1500);

/// A `false` from `queue` means "already pending": a run follows. A caller
/// whose queueing is refused (destroyed queue) must not make the item look
/// pending to others, or their `queue` returns `false` and no run follows.
#[test]
fn a_refused_queue_never_makes_another_callers_queue_a_silent_no_op() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let dead = rt.workqueue("dead").build().unwrap();
    dead.destroy().unwrap();
    let live = rt.workqueue("live").build().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let work = Work::new(move || {
        r.fetch_add(1, SeqCst);
    });
    let stop = Arc::new(AtomicBool::new(false));
    let refuser = {
        let (work, stop) = (work.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(SeqCst) {
                match dead.try_queue(&work) {
                    Err(Error::Destroyed { .. }) | Ok(false) => {}
                    other => panic!("destroyed queue answered {other:?}"),
                }
            }
        })
    };
    let (mut silent, mut tries) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < RACE_TIME {
        tries += 1;
        let before = runs.load(SeqCst);
        let queued = live.try_queue(&work).unwrap();
        work.flush().unwrap();
        if !queued && runs.load(SeqCst) == before {
            silent += 1;
        }
    }
    stop.store(true, SeqCst);
    refuser.join().unwrap();
    assert_eq!(silent, 0, "{silent} of {tries} queue calls returned false (already pending) and no run followed");
}

/// The same for delayed work queued with a zero delay on a destroyed queue.
#[test]
fn a_refused_delayed_queue_never_makes_another_callers_queue_a_silent_no_op() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let dead = rt.workqueue("dead").build().unwrap();
    dead.destroy().unwrap();
    let live = rt.workqueue("live").build().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let dwork = DelayedWork::new(move || {
        r.fetch_add(1, SeqCst);
    });
    let stop = Arc::new(AtomicBool::new(false));
    let refuser = {
        let (dwork, stop) = (dwork.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(SeqCst) {
                match dead.try_queue_delayed(&dwork, Duration::ZERO) {
                    Err(Error::Destroyed { .. }) | Ok(false) => {}
                    other => panic!("destroyed queue answered {other:?}"),
                }
            }
        })
    };
    let (mut silent, mut tries) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < RACE_TIME {
        tries += 1;
        let before = runs.load(SeqCst);
        let queued = live.try_queue_delayed(&dwork, Duration::ZERO).unwrap();
        dwork.flush().unwrap();
        if !queued && runs.load(SeqCst) == before {
            silent += 1;
        }
    }
    stop.store(true, SeqCst);
    refuser.join().unwrap();
    assert_eq!(silent, 0, "{silent} of {tries} queue_delayed calls returned false and no run followed");
}

/// `Workqueue::flush` waits for every item queued before it, also for an
/// item that was still running elsewhere when it was queued again (its new
/// instance is handed to the worker running it).
#[test]
fn queue_flush_waits_for_an_item_requeued_while_it_runs_elsewhere() {
    let rt = Runtime::builder().build().unwrap();
    let queues: Vec<_> = [
        rt.workqueue("bound").build().unwrap(),
        rt.workqueue("bound-1").max_active(1).build().unwrap(),
        rt.workqueue("unbound").flags(wq_core::Flags::UNBOUND).build().unwrap(),
        rt.workqueue("ordered").ordered().build().unwrap(),
        rt.workqueue("hi").flags(wq_core::Flags::HIGHPRI | wq_core::Flags::CPU_INTENSIVE).build().unwrap(),
    ]
    .into();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let work = Work::new(move || {
        r.fetch_add(1, SeqCst);
        if r.load(SeqCst) % 3 == 0 {
            wq_core::blocking(|| thread::sleep(Duration::from_micros(100)));
        }
    });
    let cpus = rt.cpus().to_vec();
    let mut rng = stress::Rng::new(5);
    let (mut accepted, mut early, mut last) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    while start.elapsed() < RACE_TIME {
        let i = rng.below(queues.len() as u64) as usize;
        let q = &queues[i];
        let queued = if rng.pct(50) {
            q.try_queue(&work).unwrap()
        } else {
            q.queue_on(cpus[rng.below(cpus.len() as u64) as usize], &work).unwrap()
        };
        if queued {
            accepted += 1;
            last = i;
        }
        if rng.pct(30) {
            // The latest accepted instance went to `last`: flushing it
            // must wait for every run owed so far.
            queues[last].flush().unwrap();
            if runs.load(SeqCst) != accepted {
                early += 1;
                // Re-synchronise so later checks stay exact.
                work.flush().unwrap();
            }
        }
    }
    work.flush().unwrap();
    assert_eq!(runs.load(SeqCst), accepted, "runs lost or duplicated");
    assert_eq!(early, 0, "Workqueue::flush returned {early} times before an item queued on it had run");
}

/// `Work::flush` waits for a running instance even when the item's newer,
/// pending instance was cancelled (the kernel's `flush_work`: the item is
/// idle on return unless requeued since).
#[test]
fn work_flush_waits_for_the_running_instance_after_its_requeue_was_cancelled() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("flush").build().unwrap();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = std::sync::Mutex::new(release_rx);
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (s, f) = (started.clone(), finished.clone());
    let work = Work::new(move || {
        if s.fetch_add(1, SeqCst) == 0 {
            let _ = wq_core::blocking(|| release_rx.lock().unwrap().recv());
            f.store(true, SeqCst);
        }
    });
    assert!(wq.queue(&work));
    while started.load(SeqCst) == 0 {
        thread::sleep(Duration::from_millis(1));
    }
    assert!(wq.queue(&work), "requeue while running");
    assert!(work.cancel(), "the requeued instance was pending");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (w, fin) = (work.clone(), finished.clone());
    thread::spawn(move || {
        w.flush().unwrap();
        done_tx.send(fin.load(SeqCst)).unwrap();
    });
    // Give a wrong flush time to return before the item is released.
    let early = done_rx.recv_timeout(Duration::from_millis(200)).ok();
    release_tx.send(()).unwrap();
    assert_ne!(early, Some(false), "Work::flush returned while the item was still running");
    work.flush().unwrap();
    assert!(finished.load(SeqCst));
}

/// Queueing does not take the pool lock (`pool/README.md`, "The inbox"),
/// so `destroy` must fence out threads that passed their refusal check
/// before it began. Producers queue until refused while the queue is
/// destroyed: every accepted item runs exactly once, and none starts after
/// `destroy` returned.
#[test]
fn destroy_racing_producers_runs_every_accepted_item_once_and_nothing_after() {
    for unbound in [false, true] {
        for round in 0..20 {
            let rt = Runtime::builder().build().unwrap();
            let wq = bound_or_unbound(&rt, "doomed", unbound);
            let destroyed = Arc::new(AtomicBool::new(false));
            let (ran, late) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let producers: Vec<_> = (0..3)
                .map(|_| {
                    let (wq, destroyed, ran, late) = (wq.clone(), destroyed.clone(), ran.clone(), late.clone());
                    thread::spawn(move || {
                        let mut accepted = 0usize;
                        loop {
                            let (destroyed, ran, late) = (destroyed.clone(), ran.clone(), late.clone());
                            let item = move || {
                                if destroyed.load(SeqCst) {
                                    late.fetch_add(1, SeqCst);
                                }
                                ran.fetch_add(1, SeqCst);
                            };
                            match wq.execute(item) {
                                Ok(()) => accepted += 1,
                                Err(Error::Destroyed { .. } | Error::Draining { .. }) => return accepted,
                                Err(e) => panic!("unexpected refusal {e}"),
                            }
                        }
                    })
                })
                .collect();
            thread::sleep(Duration::from_millis(2 + round % 5));
            wq.destroy().unwrap();
            destroyed.store(true, SeqCst);
            let accepted: usize = producers.into_iter().map(|p| p.join().unwrap()).sum();
            assert_eq!(late.load(SeqCst), 0, "items started after destroy returned (unbound: {unbound})");
            assert_eq!(ran.load(SeqCst), accepted, "accepted items lost or run twice (unbound: {unbound})");
        }
    }
}

/// `flush` waits for every item whose queueing returned before it began,
/// also while other threads keep queueing into the same inboxes.
#[test]
fn flush_racing_producers_waits_for_everything_queued_before_it() {
    const PER_PRODUCER: usize = 20_000;
    for unbound in [false, true] {
        let rt = Runtime::builder().build().unwrap();
        let wq = bound_or_unbound(&rt, "flushed", unbound);
        let done: Arc<Vec<Vec<AtomicBool>>> =
            Arc::new((0..2).map(|_| (0..PER_PRODUCER).map(|_| AtomicBool::new(false)).collect()).collect());
        let returned: Arc<Vec<AtomicUsize>> = Arc::new((0..2).map(|_| AtomicUsize::new(0)).collect());
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let (wq, done, returned) = (wq.clone(), done.clone(), returned.clone());
                thread::spawn(move || {
                    for i in 0..PER_PRODUCER {
                        let done = done.clone();
                        wq.execute(move || done[p][i].store(true, SeqCst)).unwrap();
                        returned[p].store(i + 1, SeqCst);
                    }
                })
            })
            .collect();
        let mut flushes = 0;
        while returned.iter().any(|r| r.load(SeqCst) < PER_PRODUCER) {
            let before: Vec<usize> = returned.iter().map(|r| r.load(SeqCst)).collect();
            wq.flush().unwrap();
            flushes += 1;
            for (p, &n) in before.iter().enumerate() {
                let missing = (0..n).filter(|&i| !done[p][i].load(SeqCst)).count();
                assert_eq!(
                    missing, 0,
                    "flush returned before {missing} items queued before it ran (unbound: {unbound})"
                );
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert!(flushes > 0);
    }
}

/// Queues are created, given one item and dropped while another queue keeps
/// the same pool's worker busy, so each item goes through the inbox and its
/// pwq is released right after the push (`pool/link.rs`, point 2: a pwq
/// must not be freed while an entry of it waits in the inbox). Every item
/// runs exactly once; a freed pwq under a waiting entry would panic a
/// worker (debug builds) or lose the item.
#[test]
fn queues_dropped_right_after_queueing_lose_nothing() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let busy = rt.workqueue("busy").build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let keep_busy = {
        let (busy, stop) = (busy.clone(), stop.clone());
        thread::spawn(move || {
            // Rounds of tiny items keep the worker running (so the other
            // queueing goes through the inbox) without a backlog to drain.
            let done = Arc::new(AtomicUsize::new(0));
            let mut sent = 0;
            while !stop.load(SeqCst) {
                for _ in 0..1_000 {
                    let done = done.clone();
                    busy.execute(move || {
                        done.fetch_add(1, SeqCst);
                    })
                    .unwrap();
                }
                sent += 1_000;
                while done.load(SeqCst) < sent - 100 {
                    thread::yield_now();
                }
            }
        })
    };
    let ran = Arc::new(AtomicUsize::new(0));
    let mut queued = 0usize;
    let start = Instant::now();
    while start.elapsed() < RACE_TIME {
        let q = rt.workqueue("short-lived").build().unwrap();
        let ran = ran.clone();
        q.execute(move || {
            ran.fetch_add(1, SeqCst);
        })
        .unwrap();
        queued += 1;
    }
    stop.store(true, SeqCst);
    keep_busy.join().unwrap();
    busy.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ran.load(SeqCst) < queued {
        assert!(Instant::now() < deadline, "{} of {queued} items ran", ran.load(SeqCst));
        thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(ran.load(SeqCst), queued, "an item ran twice");
}

/// A queue on `rt`'s bound pools, or its unbound ones.
fn bound_or_unbound(rt: &Runtime, name: &str, unbound: bool) -> wq_core::Workqueue {
    let flags = if unbound { wq_core::Flags::UNBOUND } else { wq_core::Flags::empty() };
    rt.workqueue(name).flags(flags).build().unwrap()
}
