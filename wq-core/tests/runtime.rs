//! Runtime construction, worker lifecycle and fault injection.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{thread_names, wait_until};
use wq_core::{Error, Flags, Runtime};

#[test]
fn worker_threads_are_named_like_kworkers() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let normal = rt.workqueue("normal").build().unwrap();
    normal.submit(|| ()).unwrap().wait().unwrap();
    let hi = rt.workqueue("hi").flags(Flags::HIGHPRI).build().unwrap();
    let ub = rt.workqueue("ub").flags(Flags::UNBOUND).build().unwrap();
    let own = hi.submit(|| std::fs::read_to_string("/proc/thread-self/comm").unwrap()).unwrap();
    assert!(own.wait().unwrap().trim_end().ends_with('H'), "highpri worker names end in H");
    let own = ub.submit(|| std::fs::read_to_string("/proc/thread-self/comm").unwrap()).unwrap();
    assert!(own.wait().unwrap().starts_with("wq/u"));
    let names = thread_names();
    assert!(names.iter().any(|n| n.starts_with("wq/0:") && !n.ends_with('H')), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("wq/0:") && n.ends_with('H')), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("wq/u")), "{names:?}");
}

#[test]
fn idle_workers_beyond_the_reserve_are_reaped() {
    let rt = Runtime::builder().cpus([0]).idle_timeout(Duration::from_millis(100)).build().unwrap();
    let wq = rt.workqueue("burst").build().unwrap();
    // Eight items that each wait until all eight run: the pool must grow to eight workers.
    let started = Arc::new(AtomicUsize::new(0));
    let items: Vec<_> = (0..8)
        .map(|_| {
            let started = started.clone();
            wq.submit(move || {
                started.fetch_add(1, SeqCst);
                wq_core::blocking(|| wait_until("all eight items run at once", || started.load(SeqCst) == 8));
            })
            .unwrap()
        })
        .collect();
    let bound = |rt: &Runtime| rt.stats().pools.into_iter().find(|p| p.cpu == Some(0) && !p.highpri).unwrap();
    for c in items {
        c.wait().unwrap();
    }
    wait_until("idle workers are reaped down to the reserve", || {
        let p = bound(&rt);
        p.workers == 1 && p.idle == 1
    });
    // The reserve still serves work at once.
    assert_eq!(wq.submit(|| 1).unwrap().wait().unwrap(), 1);
}

#[test]
fn failing_thread_creation_delays_work_but_never_loses_it() {
    let fail = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (f, a) = (fail.clone(), attempts.clone());
    let rt = Runtime::builder()
        .cpus([0])
        .spawn_hook(move || {
            if f.load(SeqCst) {
                a.fetch_add(1, SeqCst);
                return Err(io::Error::from_raw_os_error(libc::EAGAIN));
            }
            Ok(())
        })
        .build()
        .unwrap();
    let wq = rt.workqueue("starved").build().unwrap();
    fail.store(true, SeqCst);
    let ran = Arc::new(AtomicUsize::new(0));
    let items: Vec<_> = (0..20)
        .map(|_| {
            let r = ran.clone();
            wq.submit(move || {
                wq_core::blocking(|| thread::sleep(Duration::from_millis(20)));
                r.fetch_add(1, SeqCst);
            })
            .unwrap()
        })
        .collect();
    wait_until("creation was retried", || attempts.load(SeqCst) >= 3);
    fail.store(false, SeqCst);
    for c in items {
        c.wait().unwrap();
    }
    assert_eq!(ran.load(SeqCst), 20);
    wq.flush().unwrap();
    assert_eq!(wq.stats().total, 20);
}

#[test]
fn bad_runtime_settings_are_refused_with_a_reason() {
    assert!(matches!(Runtime::builder().cpus([]).build(), Err(Error::NoCpus)));
    match Runtime::builder().cpus([0, 4000]).build() {
        Err(Error::InvalidCpu { cpu: 4000, .. }) => {}
        other => panic!("offline CPU accepted: {other:?}"),
    }
    assert!(matches!(Runtime::builder().idle_timeout(Duration::ZERO).build(), Err(Error::InvalidConfig(_))));
    assert!(matches!(Runtime::builder().cpu_hog_threshold(Duration::ZERO).build(), Err(Error::InvalidConfig(_))));
    let err = Runtime::builder().cpus([0]).max_workers(1).build().unwrap_err();
    assert!(err.to_string().contains("max_workers 1"), "{err}");
}

/// The lowest cap `build` accepts, one worker for each pool, still gives
/// every pool a worker when its first item comes: the pools used before
/// keep no idle reserve that would take it (the reserves took the whole
/// cap, and a third pool waited for one to time out).
#[test]
fn with_one_worker_per_pool_allowed_every_pool_still_gets_one() {
    let rt = Runtime::builder().cpus([0]).max_workers(4).idle_timeout(Duration::from_secs(60)).build().unwrap();
    let normal = rt.workqueue("n").build().unwrap();
    let high = rt.workqueue("h").flags(Flags::HIGHPRI).build().unwrap();
    let unbound = rt.workqueue("u").flags(Flags::UNBOUND).build().unwrap();
    let unbound_high = rt.workqueue("uh").flags(Flags::UNBOUND | Flags::HIGHPRI).build().unwrap();
    for wq in [&normal, &high, &unbound, &unbound_high] {
        // Time for a pool that just ran its first item to ask for a reserve.
        thread::sleep(Duration::from_millis(50));
        let c = wq.submit(|| 5).unwrap();
        assert!(c.wait_timeout(Duration::from_secs(10)), "{}: no worker; {:?}", wq.name(), rt.stats());
    }
}

/// The same with the unbound queues made only after the bound pools ran:
/// `build` counted the default unbound pools, which exist only once a queue
/// makes them, and the bound pools' reserves took their room meanwhile.
#[test]
fn reserves_leave_room_for_the_unbound_pools_no_queue_has_made_yet() {
    let rt = Runtime::builder().cpus([0]).max_workers(4).idle_timeout(Duration::from_secs(60)).build().unwrap();
    let normal = rt.workqueue("n").build().unwrap();
    let high = rt.workqueue("h").flags(Flags::HIGHPRI).build().unwrap();
    normal.submit(|| ()).unwrap().wait().unwrap();
    high.submit(|| ()).unwrap().wait().unwrap();
    // Time for both pools to ask for reserves.
    thread::sleep(Duration::from_millis(200));
    let unbound = rt.workqueue("u").flags(Flags::UNBOUND).build().unwrap();
    let c = unbound.submit(|| 5).unwrap();
    assert!(c.wait_timeout(Duration::from_secs(10)), "no worker for the unbound pool: {}", rt.dump());
}

/// A burst that left one pool with idle workers up to the cap does not
/// keep another pool's first item waiting for their idle timeout: one of
/// them leaves when the cap refuses that pool its first worker.
#[test]
fn idle_workers_of_one_pool_make_room_for_another_pools_first_worker() {
    let rt = Runtime::builder().cpus([0]).max_workers(4).idle_timeout(Duration::from_secs(60)).build().unwrap();
    let normal = rt.workqueue("n").build().unwrap();
    let burst: Vec<_> = (0..8)
        .map(|_| normal.submit(|| wq_core::blocking(|| thread::sleep(Duration::from_millis(100)))).unwrap())
        .collect();
    for c in burst {
        c.wait().unwrap();
    }
    normal.flush().unwrap();
    thread::sleep(Duration::from_millis(50));
    let high = rt.workqueue("h").flags(Flags::HIGHPRI).build().unwrap();
    let c = high.submit(|| 5).unwrap();
    assert!(c.wait_timeout(Duration::from_secs(10)), "no worker for the highpri pool: {}", rt.dump());
}

#[test]
fn dropping_a_runtime_still_runs_queued_work() {
    let ran = Arc::new(AtomicUsize::new(0));
    {
        let rt = Runtime::builder().cpus([0]).build().unwrap();
        let wq = rt.workqueue("short-lived").build().unwrap();
        for _ in 0..100 {
            let r = ran.clone();
            wq.execute(move || {
                r.fetch_add(1, SeqCst);
            })
            .unwrap();
        }
    }
    wait_until("queued work ran after the runtime was dropped", || ran.load(SeqCst) == 100);
}

#[test]
fn dump_shows_pools_and_queue_mapping() {
    let rt = Runtime::builder().build().unwrap();
    let _a = rt.workqueue("dump_bound").build().unwrap();
    let _b = rt.workqueue("dump_unbound").flags(Flags::UNBOUND).build().unwrap();
    let dump = rt.dump();
    assert!(dump.contains("Worker Pools"), "{dump}");
    assert!(dump.contains("dump_bound") && dump.contains("dump_unbound"), "{dump}");
    assert!(dump.contains("nice=-20"), "{dump}");
    // The bound pools, and the one unbound pool `dump_unbound` asked for
    // (unbound pools are made on demand).
    assert_eq!(rt.stats().pools.len(), 2 * rt.cpus().len() + 1);
}

/// Regression: four items that each block until all four run need four
/// workers created one after another; a creation request made while the
/// manager was finishing the previous one used to be dropped, stalling
/// the pool with work pending and nobody running.
#[test]
fn interlocked_blocking_items_always_get_their_workers() {
    for _ in 0..60 {
        let rt = Runtime::builder().cpus([0]).build().unwrap();
        let wq = rt.workqueue("interlocked").build().unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        let all: Vec<_> = (0..4)
            .map(|_| {
                let s = started.clone();
                wq.submit(move || {
                    s.fetch_add(1, SeqCst);
                    wq_core::blocking(|| wait_until("all four items run at once", || s.load(SeqCst) == 4));
                })
                .unwrap()
            })
            .collect();
        for c in all {
            c.wait().unwrap();
        }
    }
}

/// Pools start without workers; a pool gets its first worker (and an idle
/// reserve) from its first item, and the others stay empty.
/// A worker woken for a lone item asks for an idle reserve, and is usually
/// idle again before the manager serves the request. The manager used to drop
/// the request then, so the worker asked again at every item, and every
/// item's start waited for a cross-CPU wake-up of the manager. It now creates
/// the reserve: the pool settles at two workers.
#[test]
fn a_pool_serving_lone_items_settles_with_an_idle_reserve() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("lone").build().unwrap();
    let bound = |rt: &Runtime| rt.stats().pools.into_iter().find(|p| p.cpu == Some(0) && !p.highpri).unwrap();
    for _ in 0..30 {
        assert_eq!(wq.submit(|| 1).unwrap().wait().unwrap(), 1);
        thread::sleep(Duration::from_millis(2));
    }
    wait_until("the pool keeps a reserve beside its worker", || {
        let p = bound(&rt);
        p.workers == 2 && p.idle == 2
    });
}

#[test]
fn pools_start_without_workers_until_their_first_item() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    assert!(rt.stats().pools.iter().all(|p| p.workers == 0), "{}", rt.dump());
    let wq = rt.workqueue("first").build().unwrap();
    assert_eq!(wq.submit(|| 7).unwrap().wait().unwrap(), 7);
    let stats = rt.stats();
    let normal = stats.pools.iter().find(|p| p.cpu == Some(0) && !p.highpri).unwrap();
    assert!(normal.workers >= 1, "{}", rt.dump());
    assert!(
        stats.pools.iter().filter(|p| p.highpri || p.cpu.is_none()).all(|p| p.workers == 0),
        "pools nobody used started workers:\n{}",
        rt.dump()
    );
}

/// An unbound pool keeps one runner per CPU plus a spare: on one CPU, two
/// items that never sleep run at once, and a third waits for one of them.
#[test]
fn an_unbound_pool_runs_one_spare_beyond_its_cpus() {
    let rt = Runtime::builder()
        .cpus([0])
        .detector(wq_core::Detector::ExplicitOnly)
        .cpu_hog_threshold(Duration::from_secs(60))
        .build()
        .unwrap();
    let wq = rt.workqueue("spare").flags(Flags::UNBOUND).build().unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let items: Vec<_> = (0..3)
        .map(|_| {
            let (running, peak) = (running.clone(), peak.clone());
            wq.submit(move || {
                let now = running.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                common::burn(Duration::from_millis(40));
                running.fetch_sub(1, SeqCst);
            })
            .unwrap()
        })
        .collect();
    for item in items {
        item.wait().unwrap();
    }
    assert_eq!(peak.load(SeqCst), 2, "one runner for the CPU plus the spare");
}
