//! Fault injection: failing worker creation, panics in items, panics in
//! the drops of captured values, and items that never return.
//!
//! After each fault the runtime must keep running every other item, lose
//! none, and let its pools' `running` counts go back to 0. Every wait has
//! a deadline, so a broken engine fails these tests instead of hanging them.

use std::collections::HashSet;
use std::io;
use std::panic;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use wq_core::{DelayedWork, Flags, Runtime, Work, Workqueue};

/// How long any single wait may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(10);

/// Keeps the injected panics out of the test output (other panics print).
fn quiet_injected_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !msg.contains("injected") {
                default(info);
            }
        }));
    });
}

/// A value whose drop panics: the fault under test.
struct Boom(&'static str);

impl Drop for Boom {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("injected panic in the drop of {}", self.0);
        }
    }
}

fn one_cpu_runtime() -> Runtime {
    quiet_injected_panics();
    Runtime::builder().cpus([0]).build().unwrap()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}"));
        }
        thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// The runtime still works after a fault: new items on `wq` all run, a
/// flush returns, and every pool's `running` count goes back to 0.
fn assert_healthy(rt: &Runtime, wq: &Workqueue) {
    let ran = Arc::new(AtomicUsize::new(0));
    let items: Vec<_> = (0..10)
        .map(|i| {
            let r = ran.clone();
            wq.submit(move || {
                r.fetch_add(1, SeqCst);
                i
            })
            .unwrap()
        })
        .collect();
    for (i, c) in items.into_iter().enumerate() {
        assert!(c.wait_timeout(PATIENCE), "item {i} queued after the fault never ran:\n{}", rt.dump());
        assert_eq!(c.wait().unwrap(), i);
    }
    assert_eq!(ran.load(SeqCst), 10);
    let (tx, rx) = mpsc::channel();
    let wq2 = wq.clone();
    thread::spawn(move || tx.send(wq2.flush()));
    let flushed = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("flush hangs after the fault:\n{}", rt.dump()));
    flushed.unwrap();
    wait_until("every pool is back to running = 0", || {
        rt.stats().pools.iter().all(|p| p.running == 0 && p.pending == 0)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", rt.stats()));
}

/// A one-shot item that holds its (ordered) queue until released.
fn gate(wq: &Workqueue) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel();
    wq.execute(move || {
        started_tx.send(()).unwrap();
        let _ = rx.recv();
    })
    .unwrap();
    started_rx.recv_timeout(PATIENCE).expect("the gate item never started");
    tx
}

/// Pools start without workers, so a runtime whose worker creation fails
/// still builds: its first item waits, reported, until creation works.
#[test]
fn worker_creation_failing_from_the_start_delays_the_first_item() {
    let allow = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(AtomicUsize::new(0));
    let (a, r) = (allow.clone(), refusals.clone());
    let rt = Runtime::builder()
        .cpus([0])
        .spawn_hook(move || {
            if a.load(SeqCst) {
                return Ok(());
            }
            r.fetch_add(1, SeqCst);
            Err(io::Error::other("injected: no more threads"))
        })
        .build()
        .unwrap();
    let wq = rt.workqueue("first").build().unwrap();
    let first = wq.submit(|| "ran").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while refusals.load(SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the manager never retried the refused creation");
        thread::sleep(Duration::from_millis(5));
    }
    assert!(!first.is_finished(), "an item ran although no worker could be created");
    allow.store(true, SeqCst);
    assert!(first.wait_timeout(PATIENCE), "the item never ran once creation worked");
    assert_eq!(first.wait().unwrap(), "ran");
    assert_healthy(&rt, &wq);
}

#[test]
fn intermittent_worker_creation_failures_lose_nothing() {
    quiet_injected_panics();
    let attempts = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let (a, f) = (attempts.clone(), failures.clone());
    let rt = Runtime::builder()
        .idle_timeout(Duration::from_millis(20))
        .spawn_hook(move || {
            // The first workers start; after that three creations in five fail.
            let n = a.fetch_add(1, SeqCst);
            if n >= 8 && n % 5 < 3 {
                f.fetch_add(1, SeqCst);
                return Err(io::Error::from_raw_os_error(libc::EAGAIN));
            }
            Ok(())
        })
        .build()
        .unwrap();
    let queues: Vec<_> = [Flags::empty(), Flags::HIGHPRI, Flags::UNBOUND, Flags::CPU_INTENSIVE]
        .into_iter()
        .enumerate()
        .map(|(i, flags)| rt.workqueue(&format!("faulty-{i}")).flags(flags).build().unwrap())
        .collect();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut items = Vec::new();
    for round in 0..6 {
        for (q, wq) in queues.iter().enumerate() {
            for i in 0..10 {
                let r = ran.clone();
                items.push(
                    wq.submit(move || {
                        // Sleepers make the pools ask for more workers.
                        if i % 3 == 0 {
                            wq_core::blocking(|| thread::sleep(Duration::from_millis(2)));
                        }
                        r.fetch_add(1, SeqCst);
                        (round, q, i)
                    })
                    .unwrap(),
                );
            }
        }
        // Let idle workers time out, so creation is needed again.
        thread::sleep(Duration::from_millis(30));
    }
    let n = items.len();
    for c in items {
        assert!(c.wait_timeout(PATIENCE), "an item never ran:\n{}", rt.dump());
        c.wait().unwrap();
    }
    assert_eq!(ran.load(SeqCst), n);
    assert!(failures.load(SeqCst) > 0, "no creation failed: the fault was not injected");
    for wq in &queues {
        assert_healthy(&rt, wq);
    }
}

#[test]
fn panics_in_items_are_contained_and_the_workers_survive() {
    let rt = one_cpu_runtime();
    let wq = rt.workqueue("panicky").build().unwrap();
    let threads = Arc::new(Mutex::new(HashSet::new()));
    for _ in 0..30 {
        let t = threads.clone();
        wq.execute(move || {
            t.lock().unwrap().insert(thread::current().id());
            panic!("injected panic in execute");
        })
        .unwrap();
    }
    wq.flush().unwrap();
    for i in 0..30 {
        let got = wq.submit(move || -> u32 { panic!("injected panic {i}") }).unwrap().wait();
        assert_eq!(got.unwrap_err().message(), format!("injected panic {i}"));
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let work = Work::new(move || {
        r.fetch_add(1, SeqCst);
        panic!("injected panic in a work item");
    });
    for _ in 0..10 {
        assert!(wq.queue(&work));
        work.flush().unwrap();
        // Not `is_running()`: `flush` returns once the run retired, a moment
        // before the worker clears RUNNING (see RELIABILITY.md, finding 3).
        assert!(!work.is_pending());
    }
    assert_eq!(runs.load(SeqCst), 10);
    wq.flush().unwrap(); // stats are settled once the queue is flushed
    assert_eq!(wq.stats().panics, 70);
    // Thirty panics ran on the workers that were there, not one fresh thread each.
    let distinct = threads.lock().unwrap().len();
    assert!(distinct <= 3, "the panicking items ran on {distinct} different threads: workers died");
    assert_healthy(&rt, &wq);
}

#[test]
fn a_panicking_drop_inside_an_executed_closure_is_contained() {
    let rt = one_cpu_runtime();
    let wq = rt.workqueue("drop-execute").build().unwrap();
    let boom = Boom("a value captured by an executed closure");
    wq.execute(move || {
        let _keep = &boom;
    })
    .unwrap();
    assert_healthy(&rt, &wq);
}

#[test]
fn a_panicking_drop_inside_a_submitted_closure_reaches_its_completion() {
    let rt = one_cpu_runtime();
    let wq = rt.workqueue("drop-submit").build().unwrap();
    let boom = Boom("a value captured by a submitted closure");
    let got = wq
        .submit(move || {
            let _keep = &boom;
            5
        })
        .unwrap()
        .wait();
    let err = got.expect_err("the panic in the drop was not reported");
    assert!(err.message().contains("injected"), "{err}");
    assert_healthy(&rt, &wq);
}

#[test]
fn a_cancelled_closure_whose_capture_panics_on_drop_does_not_kill_its_worker() {
    let rt = one_cpu_runtime();
    let wq = rt.workqueue("drop-cancelled").ordered().build().unwrap();
    let release = gate(&wq);
    let boom = Boom("a value captured by a cancelled closure");
    let c = wq
        .submit(move || {
            let _keep = &boom;
        })
        .unwrap();
    assert!(c.cancel().is_ok(), "the closure started behind the gate");
    // The worker now drops the closure unrun: the drop panics there.
    release.send(()).unwrap();
    assert_healthy(&rt, &wq);
}

#[test]
fn a_detached_result_that_panics_on_drop_does_not_kill_its_worker() {
    let rt = one_cpu_runtime();
    let wq = rt.workqueue("drop-result").ordered().build().unwrap();
    let release = gate(&wq);
    // Detached: nobody takes the result, so the worker drops it.
    drop(wq.submit(|| Boom("a detached result")).unwrap());
    release.send(()).unwrap();
    assert_healthy(&rt, &wq);
}

/// The `Completion` goes while the worker stores the result: here its
/// waker drops it (as an executor dropping the woken future would, or a
/// `wait_timeout` that gave up). The worker then holds the last reference
/// and drops the result itself, which must not end the worker.
#[test]
fn a_result_dropped_by_the_worker_after_its_completion_went_does_not_kill_it() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Wake, Waker};
    struct DropOnWake(Mutex<Option<wq_core::Completion<Boom>>>);
    impl Wake for DropOnWake {
        fn wake(self: Arc<Self>) {
            let completion = self.0.lock().unwrap().take();
            drop(completion);
        }
    }
    let rt = one_cpu_runtime();
    let wq = rt.workqueue("drop-on-wake").build().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let mut completion = wq
        .submit(move || {
            go_rx.recv().unwrap();
            Boom("a result whose Completion went while it was stored")
        })
        .unwrap();
    let holder = Arc::new(DropOnWake(Mutex::new(None)));
    let waker = Waker::from(holder.clone());
    assert!(Pin::new(&mut completion).poll(&mut Context::from_waker(&waker)).is_pending());
    *holder.0.lock().unwrap() = Some(completion);
    go_tx.send(()).unwrap();
    assert_healthy(&rt, &wq);
}

#[test]
fn a_work_item_whose_capture_panics_on_drop_after_the_last_handle_went() {
    let rt = one_cpu_runtime();
    let wq = rt.workqueue("drop-work").ordered().build().unwrap();
    let release = gate(&wq);
    let ran = Arc::new(AtomicBool::new(false));
    let (r, boom) = (ran.clone(), Boom("a value captured by a work item"));
    let work = Work::new(move || {
        let _keep = &boom;
        r.store(true, SeqCst);
    });
    assert!(wq.queue(&work));
    // The queued instance holds the item now; the worker drops it last.
    drop(work);
    release.send(()).unwrap();
    wait_until("the orphaned work item ran", || ran.load(SeqCst)).unwrap();
    assert_healthy(&rt, &wq);
}

#[test]
fn a_panic_payload_that_panics_on_drop_does_not_kill_its_worker() {
    let rt = one_cpu_runtime();
    let wq = rt.workqueue("drop-payload").build().unwrap();
    wq.execute(|| panic::panic_any(Boom("a panic payload"))).unwrap();
    assert_healthy(&rt, &wq);
}

#[test]
fn an_item_sleeping_forever_does_not_stall_the_others() {
    let rt = one_cpu_runtime();
    let wq = rt.workqueue("sleeper").build().unwrap();
    for hooked in [false, true] {
        let (tx, rx) = mpsc::channel::<()>();
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        // A plain blocking receive: only the sleep detector can see it;
        // the hooked variant says so through `blocking`.
        wq.execute(move || {
            s.store(true, SeqCst);
            if hooked {
                let _ = wq_core::blocking(|| rx.recv());
            } else {
                let _ = rx.recv();
            }
        })
        .unwrap();
        wait_until("the sleeper started", || started.load(SeqCst)).unwrap();
        let others: Vec<_> = (0..20).map(|i| wq.submit(move || i).unwrap()).collect();
        for c in others {
            assert!(c.wait_timeout(PATIENCE), "an item waited behind the sleeper (hooked: {hooked}):\n{}", rt.dump());
        }
        drop(tx);
    }
    assert_healthy(&rt, &wq);
}

#[test]
fn an_item_spinning_forever_is_marked_a_cpu_hog_and_the_others_progress() {
    let rt = one_cpu_runtime();
    let wq = rt.workqueue("spinner").build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (st, sp) = (stop.clone(), started.clone());
    wq.execute(move || {
        sp.store(true, SeqCst);
        while !st.load(SeqCst) {
            std::hint::spin_loop();
        }
    })
    .unwrap();
    wait_until("the spinner started", || started.load(SeqCst)).unwrap();
    let others: Vec<_> = (0..20).map(|i| wq.submit(move || i).unwrap()).collect();
    let mut stalled = None;
    for (i, c) in others.into_iter().enumerate() {
        if !c.wait_timeout(PATIENCE) {
            stalled = Some(i);
            break;
        }
    }
    stop.store(true, SeqCst);
    assert_eq!(stalled, None, "an item waited behind the spinner:\n{}", rt.dump());
    // The counter is charged when the hog's item ends.
    wq.flush().unwrap();
    assert!(wq.stats().cpu_hogs >= 1, "the spinner was not counted as a CPU hog");
    assert_healthy(&rt, &wq);
}

/// A `Completion` awaited by an executor whose waker panics: the worker
/// that finishes the item wakes it, and must survive the panic.
#[test]
fn a_panicking_waker_does_not_end_the_worker_that_wakes_it() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Wake, Waker};
    struct PanickingWaker;
    impl Wake for PanickingWaker {
        fn wake(self: Arc<Self>) {
            panic!("injected: the waker panics");
        }
    }
    quiet_injected_panics();
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("woken").build().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let mut done = pin!(wq.submit(move || go_rx.recv().map(|()| "ran")).unwrap());
    let waker = Waker::from(Arc::new(PanickingWaker));
    assert!(done.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
    go_tx.send(()).unwrap();
    wait_until("the item finished", || done.is_finished()).unwrap();
    let Poll::Ready(result) = done.as_mut().poll(&mut Context::from_waker(&waker)) else {
        panic!("finished, yet not ready")
    };
    assert_eq!(result.unwrap(), Ok("ran"));
    assert_healthy(&rt, &wq);
}

/// A delayed item cancelled and then dropped while its timer is pending:
/// when the deadline passes, the timer thread holds the last reference,
/// and the capture's panicking `Drop` runs there. Delayed items armed
/// after it must still fire.
#[test]
fn a_cancelled_delayed_item_whose_capture_panics_on_drop_does_not_stop_the_timer() {
    quiet_injected_panics();
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("timers").build().unwrap();
    let capture = Boom("a cancelled delayed item's capture");
    let doomed = DelayedWork::new(move || {
        let _ = &capture;
    });
    assert!(wq.queue_delayed(&doomed, Duration::from_millis(20)));
    assert!(doomed.cancel());
    drop(doomed);
    // Armed later with the same delay, so its timer fires after the doomed one's.
    let (tx, rx) = mpsc::channel();
    let later = DelayedWork::new(move || {
        let _ = tx.send(());
    });
    assert!(wq.queue_delayed(&later, Duration::from_millis(20)));
    assert!(rx.recv_timeout(PATIENCE).is_ok(), "the timer thread stopped firing delayed items");
    assert_healthy(&rt, &wq);
}

/// The spawn hook is user code on the monitor's thread; a panic in it
/// fails that one creation (retried with backoff) instead of ending the
/// thread that creates workers and detects sleeps.
#[test]
fn a_panicking_spawn_hook_fails_one_creation_and_work_still_runs() {
    quiet_injected_panics();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let rt = Runtime::builder()
        .cpus([0])
        .spawn_hook(move || {
            if c.fetch_add(1, SeqCst) == 0 {
                panic!("injected: the spawn hook panics once");
            }
            Ok(())
        })
        .build()
        .unwrap();
    let wq = rt.workqueue("after-a-panic").build().unwrap();
    let done = wq.submit(|| "ran").unwrap();
    assert!(done.wait_timeout(PATIENCE), "no worker was made after the hook panicked:\n{}", rt.dump());
    assert_eq!(done.wait().unwrap(), "ran");
    assert!(calls.load(SeqCst) >= 2, "the failed creation was not retried");
    assert_healthy(&rt, &wq);
}

#[test]
fn the_watchdog_reports_a_pool_stalled_behind_an_item_that_never_returns() {
    quiet_injected_panics();
    // One worker and no more: the sleeper's pool cannot get another.
    let created = Arc::new(AtomicUsize::new(0));
    let c = created.clone();
    let rt = Runtime::builder()
        .cpus([0])
        .watchdog_threshold(Duration::from_millis(100))
        .spawn_hook(move || match c.fetch_add(1, SeqCst) {
            0 => Ok(()),
            _ => Err(io::Error::other("injected: one worker only")),
        })
        .build()
        .unwrap();
    let wq = rt.workqueue("stuck").build().unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    wq.execute(move || {
        let _ = wq_core::blocking(|| rx.recv());
    })
    .unwrap();
    let behind = wq.submit(|| "finally").unwrap();
    wait_until("the watchdog counted a stall", || rt.stats().pools.iter().any(|p| p.stalls > 0))
        .unwrap_or_else(|e| panic!("{e}:\n{}", rt.dump()));
    assert!(!behind.is_finished(), "the item behind the sleeper ran without a worker");
    drop(tx);
    assert!(behind.wait_timeout(PATIENCE), "the item behind the sleeper never ran once it woke");
    assert_eq!(behind.wait().unwrap(), "finally");
    assert_healthy(&rt, &wq);
}

/// A delayed item that fires as it drops the runtime's last handle lands on
/// a pool that never had a worker; if none can be made at shutdown, the
/// dropping thread runs it rather than losing it.
#[test]
fn work_left_at_shutdown_on_a_pool_without_workers_still_runs() {
    let rt =
        Runtime::builder().cpus([0]).spawn_hook(|| Err(io::Error::other("injected: no more threads"))).build().unwrap();
    // max_active 1: the items behind the first wait inactive, and each
    // completion must activate the next even with no worker to run it.
    let wq = rt.workqueue("last").max_active(1).build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let r = ran.clone();
        wq.execute(move || {
            r.fetch_add(1, SeqCst);
        })
        .unwrap();
    }
    let r = ran.clone();
    let dw = DelayedWork::new(move || {
        r.fetch_add(1, SeqCst);
    });
    assert!(wq.queue_delayed(&dw, Duration::from_millis(20)));
    drop((rt, wq));
    let deadline = Instant::now() + PATIENCE;
    while ran.load(SeqCst) < 4 {
        assert!(Instant::now() < deadline, "{} of 4 items ran: work queued at shutdown was lost", ran.load(SeqCst));
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(50));
    assert_eq!(ran.load(SeqCst), 4, "an item ran more than once");
    assert!(!dw.is_pending());
}
