//! tokio's own `spawn_blocking` behaviour, checked against the compat crate.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use wq_core::Workqueue;
use wq_tokio_compat::{spawn_blocking, spawn_blocking_on, JoinError};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn results_come_back_through_the_handle() {
    let out = rt().block_on(async {
        let a = spawn_blocking(|| 40);
        let b = spawn_blocking(|| String::from("two"));
        (a.await.unwrap(), b.await.unwrap())
    });
    assert_eq!(out, (40, "two".to_owned()));
}

#[test]
fn panics_come_back_through_the_handle() {
    let err: JoinError = rt().block_on(spawn_blocking(|| -> u8 { panic!("blocking panic") })).unwrap_err();
    assert!(err.is_panic());
    assert!(!err.is_cancelled());
    let payload = err.try_into_panic().expect("a panic");
    assert_eq!(payload.downcast_ref::<&str>().copied(), Some("blocking panic"));
    // The queue's workers survived.
    assert_eq!(rt().block_on(spawn_blocking(|| 1)).unwrap(), 1);
}

#[test]
fn abort_before_start_cancels() {
    // Ordered (one closure at a time, whatever the CPU): the second cannot
    // start while the first runs.
    let wq = Workqueue::builder("t_tc_abort_pre").ordered().build().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let first = spawn_blocking_on(&wq, move || {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    started_rx.recv().unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let second = {
        let ran = Arc::clone(&ran);
        spawn_blocking_on(&wq, move || ran.store(true, Ordering::SeqCst))
    };
    second.abort();
    release_tx.send(()).unwrap();
    let rt = rt();
    rt.block_on(first).unwrap();
    let err = rt.block_on(second).unwrap_err();
    assert!(err.is_cancelled(), "{err:?}");
    wq.flush().unwrap();
    assert!(!ran.load(Ordering::SeqCst), "an aborted closure ran");
}

#[test]
fn abort_while_running_lets_it_finish() {
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let handle = spawn_blocking(move || {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        "finished"
    });
    started_rx.recv().unwrap();
    handle.abort();
    assert!(!handle.is_finished());
    release_tx.send(()).unwrap();
    assert_eq!(rt().block_on(handle).unwrap(), "finished");
}

#[test]
fn a_thousand_sleeping_calls_run_concurrently() {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = rt().block_on(async {
        let handles: Vec<_> = (0..1000)
            .map(|_| {
                let now = Arc::clone(&now);
                let peak = Arc::clone(&peak);
                spawn_blocking(move || {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        let mut done = 0;
        for h in handles {
            h.await.unwrap();
            done += 1;
        }
        done
    });
    assert_eq!(done, 1000);
    // Run one after another they would take 10 s; at least 50 at once
    // means the total is a small fraction of that.
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak >= 50, "only {peak} sleeping calls ever ran at once");
}

#[test]
fn works_outside_any_runtime() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let handle = spawn_blocking(|| 5 * 5);
    assert_eq!(wq_futures::block_on(handle).unwrap(), 25);
}

#[test]
fn dropping_the_handle_detaches() {
    let (tx, rx) = mpsc::channel();
    drop(spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(20));
        tx.send(3).unwrap();
    }));
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(3));
}

#[test]
fn is_finished_turns_true() {
    let handle = spawn_blocking(|| 1);
    let rt = rt();
    rt.block_on(async {
        while !handle.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    assert_eq!(rt.block_on(handle).unwrap(), 1);
}
