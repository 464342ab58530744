//! What happens to blocking work when the tokio runtime or the queue goes.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use wq_core::Workqueue;
use wq_futures::block_on;
use wq_tokio_compat::{shutdown_timeout, spawn_blocking_on, spawn_on};

#[test]
fn dropping_the_tokio_runtime_leaves_queued_and_running_work_alone() {
    let wq = Workqueue::builder("t_tc_rt_drop").ordered().build().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (running, queued) = rt.block_on(async {
        let running = spawn_blocking_on(&wq, move || {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            "running one"
        });
        let queued = spawn_blocking_on(&wq, || "queued one");
        (running, queued)
    });
    started_rx.recv().unwrap();
    drop(rt);
    release_tx.send(()).unwrap();
    assert_eq!(block_on(running).unwrap(), "running one");
    assert_eq!(block_on(queued).unwrap(), "queued one");
}

#[test]
fn dropping_every_queue_handle_does_not_drop_the_work() {
    let (tx, rx) = mpsc::channel();
    {
        let wq = Workqueue::builder("t_tc_wq_drop").ordered().build().unwrap();
        for i in 0..10 {
            let tx = tx.clone();
            drop(spawn_blocking_on(&wq, move || {
                std::thread::sleep(Duration::from_millis(2));
                tx.send(i).unwrap();
            }));
        }
    }
    let got: Vec<i32> = (0..10).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

#[test]
fn shutdown_timeout_runs_queued_work_then_refuses_new_work() {
    let wq = Workqueue::builder("t_tc_shutdown").ordered().build().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let events = Arc::clone(&events);
            spawn_blocking_on(&wq, move || {
                std::thread::sleep(Duration::from_millis(20));
                events.lock().unwrap().push(i);
                i
            })
        })
        .collect();
    shutdown_timeout(&wq, Duration::from_secs(30))
        .expect("queue can be shut down")
        .expect("three 20 ms closures finish within 30 s");
    assert_eq!(*events.lock().unwrap(), [0, 1, 2], "queued work did not all run");
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(block_on(h).unwrap(), i);
    }
    let late = block_on(spawn_blocking_on(&wq, || 9)).unwrap_err();
    assert!(late.is_cancelled());
}

#[test]
fn shutdown_timeout_gives_up_waiting_but_the_work_finishes() {
    let wq = Workqueue::builder("t_tc_shutdown_to").build().unwrap();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel();
    let slow = spawn_blocking_on(&wq, move || {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        "slow"
    });
    started_rx.recv().unwrap();
    let timed_out = shutdown_timeout(&wq, Duration::from_millis(50))
        .expect("queue can be shut down")
        .expect_err("the closure is still blocked");
    assert!(timed_out.to_string().contains("t_tc_shutdown_to"));
    release_tx.send(()).unwrap();
    assert_eq!(block_on(slow).unwrap(), "slow");
}

#[test]
fn spawn_on_tasks_fail_visibly_when_their_runtime_goes() {
    let wq = Workqueue::builder("t_tc_spawn_on_drop").build().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    // Entering the runtime is all `spawn_on` needs to find it.
    let handle = {
        let _guard = rt.enter();
        spawn_on(&wq, async move {
            started_tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        })
        .unwrap()
    };
    started_rx.recv().unwrap();
    drop(rt);
    let err = block_on(handle).expect_err("the timer cannot fire without its runtime");
    assert!(err.is_panic(), "{err:?}");
}

/// From one of the queue's own items, `shutdown_timeout` would wait for
/// itself (its `destroy` runs on a helper thread, where the queue's own
/// check cannot see the caller): it refuses at once. A queue already shut
/// down shuts down again at once.
#[test]
fn shutdown_timeout_from_an_own_item_is_refused_and_a_second_one_is_immediate() {
    let wq = Workqueue::builder("shutdown-own").build().unwrap();
    let q = wq.clone();
    let refused = block_on(spawn_blocking_on(&wq, move || shutdown_timeout(&q, Duration::from_secs(5)))).unwrap();
    assert!(matches!(refused, Err(wq_core::Error::WouldDeadlock(_))), "{refused:?}");
    assert!(matches!(shutdown_timeout(&wq, Duration::from_secs(30)), Ok(Ok(()))));
    assert!(matches!(shutdown_timeout(&wq, Duration::from_secs(30)), Ok(Ok(()))), "already shut down");
}

/// A queue with nothing to run shuts down in time whatever the timeout,
/// even a zero one (the helper thread that waits for `destroy` had not
/// started, and "still had blocking work" was reported); so does one
/// already shut down.
#[test]
fn an_idle_or_shut_down_queue_shuts_down_in_time_even_with_a_zero_timeout() {
    for i in 0..20 {
        let wq = Workqueue::builder(&format!("t_tc_idle{i}")).build().unwrap();
        assert!(matches!(shutdown_timeout(&wq, Duration::ZERO), Ok(Ok(()))), "idle queue {i}");
        assert!(wq.is_destroyed());
        assert!(matches!(shutdown_timeout(&wq, Duration::ZERO), Ok(Ok(()))), "shut down queue {i}");
    }
}

/// With nothing in flight when the time runs out, `shutdown_timeout` waits
/// only a short grace for the helper: an item queued before the helper
/// raised `draining` is not waited for past it (it waited 1.5 s for one).
#[test]
fn shutdown_timeout_keeps_its_timeout_when_work_arrives_just_after_the_idle_check() {
    use std::sync::Barrier;
    use std::time::Instant;
    let rt = wq_core::Runtime::builder().cpus([0]).publish(false).build().unwrap();
    for round in 0..40u64 {
        let wq = rt.workqueue("q").build().unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let (b, q) = (barrier.clone(), wq.clone());
        let delay = Duration::from_micros(round * 37 % 400);
        let producer = std::thread::spawn(move || {
            b.wait();
            let t = Instant::now();
            while t.elapsed() < delay {
                std::hint::spin_loop();
            }
            q.execute(|| std::thread::sleep(Duration::from_millis(1500))).is_ok()
        });
        barrier.wait();
        let t0 = Instant::now();
        let r = shutdown_timeout(&wq, Duration::ZERO);
        let took = t0.elapsed();
        producer.join().unwrap();
        assert!(took < Duration::from_millis(1000), "round {round}: {r:?} after {took:?}");
        let _ = wq.destroy();
    }
}
