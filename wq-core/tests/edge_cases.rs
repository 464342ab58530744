//! Edge cases across runtimes and the process: queue ids, `freeze` from
//! items of dropped queues, a runtime dropped while frozen, the system
//! queues, absurd CPU lists, and snapshot files that are not files.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use wq_core::{Error, Flags, Runtime, Workqueue};

const PATIENCE: Duration = Duration::from_secs(5);

fn one_cpu() -> Runtime {
    Runtime::builder().cpus([0]).publish(false).build().unwrap()
}

/// Runs `f` as an item of `wq` and gives its result.
fn from_inside<T: Send + 'static>(wq: &Workqueue, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    wq.execute(move || tx.send(f()).unwrap()).unwrap();
    rx.recv_timeout(PATIENCE).expect("the call from inside the item hangs")
}

/// Queue ids are process-wide: the first queue of one runtime is not
/// "current" inside the first queue of another (per-runtime ids made it so,
/// and flush, drain and destroy of it refused as a deadlock).
#[test]
fn a_queue_of_another_runtime_is_not_current() {
    let rt1 = one_cpu();
    let rt2 = one_cpu();
    let q1 = rt1.workqueue("q1").build().unwrap();
    let q2 = rt2.workqueue("q2").build().unwrap();
    let q2c = q2.clone();
    let (is_current, flush, drain) = from_inside(&q1, move || (q2c.is_current(), q2c.flush(), q2c.drain()));
    assert!(!is_current, "q2.is_current() is true inside an item of q1, a queue of another runtime");
    flush.expect("flush of another runtime's queue from an item of q1");
    drain.expect("drain of another runtime's queue from an item of q1");
}

/// `destroy` of another runtime's queue from an item.
#[test]
fn destroy_of_another_runtimes_queue_from_an_item() {
    let rt1 = one_cpu();
    let rt2 = one_cpu();
    let q1 = rt1.workqueue("q1").build().unwrap();
    let q2 = rt2.workqueue("q2").build().unwrap();
    let q2c = q2.clone();
    let destroy = from_inside(&q1, move || q2c.destroy());
    destroy.expect("destroy of another runtime's queue from an item of q1");
    assert!(q2.is_destroyed());
}

/// While q2 drains, only q2's own items may queue on it, not an item of
/// another runtime's queue (which per-runtime ids let through).
#[test]
fn a_draining_queue_refuses_items_of_another_runtimes_queue() {
    let rt1 = one_cpu();
    let rt2 = one_cpu();
    let q1 = rt1.workqueue("q1").build().unwrap();
    let q2 = rt2.workqueue("q2").build().unwrap();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    q2.execute(move || {
        let _ = gate_rx.recv_timeout(PATIENCE);
    })
    .unwrap();
    let q2d = q2.clone();
    let drainer = thread::spawn(move || q2d.drain());
    thread::sleep(Duration::from_millis(100));
    // Control: a plain thread is refused.
    assert!(matches!(q2.execute(|| {}), Err(Error::Draining { .. })), "the drain has begun");
    let q2c = q2.clone();
    let from_q1 = from_inside(&q1, move || q2c.execute(|| {}));
    gate_tx.send(()).unwrap();
    drainer.join().unwrap().unwrap();
    assert!(
        matches!(from_q1, Err(Error::Draining { .. })),
        "an item of q1 (another runtime) queued on draining q2: {from_q1:?}"
    );
}

/// `Runtime::freeze` from an item of a freezable queue whose handles are
/// gone is refused, as from any freezable item (it waited for itself).
#[test]
fn freeze_from_an_item_of_a_dropped_freezable_queue() {
    let rt = one_cpu();
    let wq = rt.workqueue("fz").flags(Flags::FREEZABLE).build().unwrap();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (tx, rx) = mpsc::channel();
    let r = rt.clone();
    wq.execute(move || {
        gate_rx.recv_timeout(PATIENCE).unwrap();
        tx.send(r.freeze()).unwrap();
    })
    .unwrap();
    drop(wq);
    gate_tx.send(()).unwrap();
    let res = rx.recv_timeout(PATIENCE).expect("Runtime::freeze from an item of a freezable queue hangs");
    assert!(matches!(res, Err(Error::WouldDeadlock(_))), "{res:?}");
}

/// An item of a non-freezable queue of one runtime may freeze another
/// runtime, whose first queue is freezable (it was refused as a deadlock).
#[test]
fn freeze_of_another_runtime_from_an_item_is_not_a_deadlock() {
    let rt1 = one_cpu();
    let rt2 = one_cpu();
    let q1 = rt1.workqueue("plain").build().unwrap();
    let _q2 = rt2.workqueue("fz").flags(Flags::FREEZABLE).build().unwrap();
    let r2 = rt2.clone();
    let res = from_inside(&q1, move || r2.freeze());
    rt2.thaw();
    res.expect("freeze of another runtime from a non-freezable item");
}

/// Items queued on a frozen queue when the runtime's last handle goes run
/// (nobody could thaw them any more; they were lost).
#[test]
fn items_of_a_frozen_queue_when_the_runtime_is_dropped() {
    let rt = one_cpu();
    let wq = rt.workqueue("fz").flags(Flags::FREEZABLE).build().unwrap();
    rt.freeze().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let c = wq
        .submit(move || {
            r.fetch_add(1, SeqCst);
            7
        })
        .unwrap();
    drop(wq);
    drop(rt);
    let finished = c.wait_timeout(PATIENCE);
    assert!(finished, "the submitted item neither ran nor was reported: runs = {}", runs.load(SeqCst));
}

/// The system queues are shared by the whole process: `destroy` is
/// refused, and they keep working.
#[test]
fn destroying_a_system_queue_is_refused() {
    let r = wq_core::system_long_wq().destroy();
    assert!(matches!(r, Err(Error::SystemQueue { .. })), "{r:?}");
    assert_eq!(wq_core::system_long_wq().submit(|| 1).unwrap().wait().unwrap(), 1);
}

/// A CPU iterator far longer than any machine is refused, not collected
/// until memory runs out (it aborted the process).
#[test]
fn a_huge_cpu_range_is_refused() {
    let r = Runtime::builder().cpus(0..(1usize << 40)).build();
    assert!(matches!(r, Err(Error::InvalidCpu { .. }) | Err(Error::InvalidConfig(_))), "{:?}", r.map(drop));
}

/// `Snapshot::read` of a FIFO is an error, not a wait for a writer.
#[test]
fn reading_a_fifo_as_a_snapshot_is_an_error() {
    let dir = std::env::temp_dir().join(format!("review-input-fifo-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let fifo = dir.join("123.1");
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (tx, rx) = mpsc::channel();
    let p = fifo.clone();
    thread::spawn(move || tx.send(wq_core::Snapshot::read(&p).map(|_| ()).map_err(|e| e.to_string())).unwrap());
    let r = rx.recv_timeout(PATIENCE);
    let _ = std::fs::remove_file(&fifo);
    let r = r.expect("Snapshot::read of a FIFO hangs");
    assert!(r.is_err(), "a FIFO read as a snapshot: {r:?}");
}

/// An item queued just before the runtime is dropped, while its pool's
/// first worker is being made, still runs when that creation fails: a
/// dying pool is retried by nobody (it waited for ever).
#[test]
fn a_runtime_dropped_while_the_first_workers_creation_fails_still_runs_the_item() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let rt = Runtime::builder()
        .cpus([0])
        .publish(false)
        .spawn_hook(move || {
            if c.fetch_add(1, SeqCst) == 0 {
                // Slow, then refused: the runtime is dropped meanwhile.
                thread::sleep(Duration::from_millis(300));
                return Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
            }
            Ok(())
        })
        .build()
        .unwrap();
    let q = rt.workqueue("q").build().unwrap();
    let item = q.submit(|| "ran").unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while calls.load(SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "the manager never tried to make a worker");
        thread::sleep(Duration::from_millis(2));
    }
    thread::sleep(Duration::from_millis(50));
    drop((q, rt));
    assert!(item.wait_timeout(PATIENCE), "the item never ran ({} creations tried)", calls.load(SeqCst));
}

/// After the runtime is dropped, its pools finish their work, and
/// concurrency management still holds: an item that blocks waiting for an
/// item queued after it gets that item run (it was never run: a dying pool
/// got no new worker once its only one blocked).
#[test]
fn after_the_runtime_is_dropped_an_item_blocking_on_a_later_one_is_not_left_waiting() {
    // No idle reserve may take B at shutdown: the cap of four workers
    // keeps room for the first worker of each of the four pools (the
    // unbound ones made by the two queues), so the bound pool keeps one.
    // ExplicitOnly: A's wait for the gate is not taken for a sleep.
    let rt = Runtime::builder()
        .cpus([0])
        .publish(false)
        .max_workers(4)
        .detector(wq_core::Detector::ExplicitOnly)
        .build()
        .unwrap();
    let _u = rt.workqueue("u").flags(Flags::UNBOUND).build().unwrap();
    let _uh = rt.workqueue("uh").flags(Flags::UNBOUND | Flags::HIGHPRI).build().unwrap();
    let q = rt.workqueue("q").build().unwrap();
    q.submit(|| ()).unwrap().wait().unwrap();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(rt.stats().workers, 1, "{}", rt.dump());
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (b_tx, b_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let a = q
        .submit(move || {
            started_tx.send(()).unwrap();
            let _ = gate_rx.recv_timeout(PATIENCE);
            wq_core::blocking(|| b_rx.recv_timeout(PATIENCE).is_ok())
        })
        .unwrap();
    started_rx.recv_timeout(PATIENCE).unwrap();
    // A took the pool's last idle worker, which asks the manager for a
    // reserve: answered (refused, under the cap) before B comes, B would
    // not have it refused.
    thread::sleep(Duration::from_millis(50));
    let b = q.submit(move || _ = b_tx.send(())).unwrap();
    assert_eq!(rt.stats().workers, 1, "{}", rt.dump());
    drop((q, rt, _u, _uh));
    thread::sleep(Duration::from_millis(50));
    assert!(!b.is_finished(), "B waits behind A, which holds the only running worker");
    gate_tx.send(()).unwrap();
    assert!(b.wait_timeout(PATIENCE), "B never ran while A blocked waiting for it");
    assert!(a.wait().unwrap(), "A got B's signal");
}

/// Dropping the runtime does not run a busy unbound pool's waiting item on
/// the dropping thread: a dying pool with a worker at work is not orphaned,
/// though an unbound pool wants more than one running (the drop ran it,
/// taking as long as the item, when no worker could be made).
#[test]
fn dropping_the_runtime_leaves_a_busy_unbound_pools_items_to_its_worker() {
    use std::sync::atomic::AtomicBool;
    let spawns = Arc::new(AtomicUsize::new(0));
    let s = spawns.clone();
    let rt = Runtime::builder()
        .cpus([0])
        .publish(false)
        .detector(wq_core::Detector::ExplicitOnly)
        .spawn_hook(move || {
            if s.fetch_add(1, SeqCst) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
            }
        })
        .build()
        .unwrap();
    let q = rt.workqueue("u").flags(Flags::UNBOUND).build().unwrap();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let a = q
        .submit(move || {
            started_tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(300));
        })
        .unwrap();
    started_rx.recv_timeout(PATIENCE).unwrap();
    let released = Arc::new(AtomicBool::new(false));
    let r = released.clone();
    let b = q
        .submit(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while !r.load(SeqCst) && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            (thread::current().id(), r.load(SeqCst))
        })
        .unwrap();
    thread::sleep(Duration::from_millis(50));
    drop((q, rt));
    released.store(true, SeqCst);
    a.wait().unwrap();
    let (ran_on, saw_release) = b.wait().unwrap();
    assert!(ran_on != thread::current().id() && saw_release, "B ran on the dropping thread, inside drop");
}

/// A `MEM_RECLAIM` queue dropped without ever being used leaves no rescuer
/// thread: its pwqs are freed at once, not when their pools are next
/// locked (a CPU's pool the queue never used never is).
#[test]
fn an_unused_mem_reclaim_queue_dropped_leaves_no_rescuer_thread() {
    let rt = one_cpu();
    let q = rt.workqueue("unusedr").flags(Flags::MEM_RECLAIM).build().unwrap();
    let names = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .any(|n| n.starts_with("wq/r:unusedr"))
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    while !names() {
        assert!(std::time::Instant::now() < deadline, "the rescuer never started");
        thread::sleep(Duration::from_millis(5));
    }
    drop(q);
    let deadline = std::time::Instant::now() + PATIENCE;
    while names() {
        assert!(std::time::Instant::now() < deadline, "the rescuer of a dropped, unused queue is still there");
        thread::sleep(Duration::from_millis(5));
    }
}
