//! A dropped runtime stops all of its threads (alone in its test binary,
//! so no other runtime's threads are counted).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::wait_until;
use wq_core::{Flags, Runtime, Work};

fn wq_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|n| n.starts_with("wq/"))
        .count()
}

#[test]
fn dropping_the_last_handle_stops_every_thread_of_the_runtime() {
    assert_eq!(wq_threads(), 0);
    let rt = wq_core::Runtime::builder().idle_timeout(Duration::from_secs(600)).build().unwrap();
    let wq = rt.workqueue("bye").build().unwrap();
    let dw = wq_core::DelayedWork::new(|| {});
    assert!(wq.queue_delayed(&dw, Duration::from_millis(30)));
    for _ in 0..10 {
        let _ = wq.execute(|| wq_core::blocking(|| std::thread::sleep(Duration::from_millis(10))));
    }
    // Threads name themselves once they run.
    let started = 2 * rt.cpus().len() + 2;
    common::wait_until("the runtime's threads are up", || wq_threads() >= started);
    drop((rt, wq));
    // Armed delayed work keeps the runtime alive until it fired.
    common::wait_until("every wq thread exited", || wq_threads() == 0);
    assert!(!dw.is_pending());
}

/// How long a test waits for one step before calling it a hang.
const PATIENCE: Duration = Duration::from_secs(10);

/// A Work item runs on pool Q (highpri queue) while queued on pool P
/// (normal queue, max_active 1): P's worker hands the instance to Q's
/// worker. Another item waits inactive behind it on P. The runtime is
/// dropped; P's workers exit (worklist empty). When Q's worker completes
/// the handed-off instance's record on P, P activates the waiting item,
/// with no worker left and a dying pool asking the manager for none: the
/// completing thread now sees it orphaned and runs it (it waited for ever).
#[test]
fn work_activated_on_a_dying_pool_after_its_workers_left_still_runs() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let p_wq = rt.workqueue("p").max_active(1).build().unwrap();
    let q_wq = rt.workqueue("q").flags(Flags::HIGHPRI).build().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    let work = Work::new(move || {
        if r2.fetch_add(1, SeqCst) == 0 {
            let _ = go_rx.lock().unwrap().recv_timeout(PATIENCE);
        }
    });
    assert!(q_wq.queue(&work));
    wait_until("work runs on q", || work.is_running());
    assert!(p_wq.queue(&work));
    // P's worker finds it busy and parks the instance for Q's worker.
    thread::sleep(Duration::from_millis(100));
    let after = Arc::new(AtomicUsize::new(0));
    let a2 = after.clone();
    let done = p_wq
        .submit(move || {
            a2.fetch_add(1, SeqCst);
        })
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    drop(p_wq);
    drop(q_wq);
    drop(rt);
    thread::sleep(Duration::from_millis(50));
    go_tx.send(()).unwrap();
    wait_until("work ran twice", || runs.load(SeqCst) == 2);
    let r = done.wait_timeout(Duration::from_secs(5));
    assert_eq!(after.load(SeqCst), 1, "item behind the handed-off instance never ran (finished: {r})");
}

/// The last handle of a runtime drops inside an item on pool P0's worker,
/// while pool P1 (highpri) holds work and cannot get a worker. `shut_down`
/// runs P1's orphans on the calling thread, the worker inside its item;
/// that worker's own context is put back afterwards (it was overwritten,
/// the item's end panicked, and the worker died with work behind it).
#[test]
fn runtime_dropped_inside_an_item_while_another_pool_has_orphans() {
    let spawned = Arc::new(AtomicUsize::new(0));
    let s2 = spawned.clone();
    let rt = Runtime::builder()
        .cpus([0])
        .spawn_hook(move || {
            if s2.fetch_add(1, SeqCst) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::other("injected: no more threads"))
            }
        })
        .build()
        .unwrap();
    let normal = rt.workqueue("normal").build().unwrap();
    let high = rt.workqueue("high").flags(Flags::HIGHPRI).build().unwrap();
    // P0's first worker.
    normal.submit(|| ()).unwrap().wait().unwrap();
    let orphan_ran = Arc::new(AtomicUsize::new(0));
    let o2 = orphan_ran.clone();
    let orphan = high
        .submit(move || {
            o2.fetch_add(1, SeqCst);
        })
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(orphan_ran.load(SeqCst), 0, "highpri pool should have no worker");
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let handles = Mutex::new(Some((rt.clone(), normal.clone(), high.clone())));
    let dropper = normal
        .submit(move || {
            let _ = go_rx.recv_timeout(PATIENCE);
            // The runtime's last handles drop here, inside the item.
            drop(handles.lock().unwrap().take());
            7
        })
        .unwrap();
    let behind_ran = Arc::new(AtomicUsize::new(0));
    let b2 = behind_ran.clone();
    let behind = normal
        .submit(move || {
            b2.fetch_add(1, SeqCst);
        })
        .unwrap();
    drop(normal);
    drop(high);
    drop(rt);
    go_tx.send(()).unwrap();
    assert!(dropper.wait_timeout(PATIENCE), "dropping item never finished");
    assert!(orphan.wait_timeout(PATIENCE), "orphan never ran");
    assert!(
        behind.wait_timeout(Duration::from_secs(5)),
        "item queued behind the dropping item never ran (worker died?)"
    );
    assert_eq!(behind_ran.load(SeqCst), 1);
}
