//! Automatic sleep and CPU-hog detection: concurrency management for code
//! that never calls `wq_core::blocking`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{burn, seed_timeline, undistorted_max_active_3, wait_until, warmed_up, Events, SleepKind, UNIT};
use wq_core::{Detector, Flags, Runtime};

/// One CPU, as the seed assumes; its burns (one UNIT) stay below the hog
/// threshold, as the seed's 5 ms do below the kernel's 10 ms.
fn runtime(detector: Detector) -> Runtime {
    warmed_up(Runtime::builder().cpus([0]).detector(detector).cpu_hog_threshold(20 * UNIT).build().unwrap())
}

fn check_max_active_3(detector: Detector) {
    let rt = runtime(detector);
    let q0 = rt.workqueue("q0").max_active(3).build().unwrap();
    let ev = undistorted_max_active_3(|| seed_timeline(&q0, &q0, SleepKind::Plain));
    let log = format!("{}\n{}", ev.render(), rt.dump());
    assert!(ev.at("w1", "start") >= ev.at("w0", "sleep"), "{log}");
    assert!(ev.at("w1", "start") < ev.at("w0", "wake"), "w1 must start while w0 sleeps:\n{log}");
    assert!(ev.at("w2", "start") >= ev.at("w1", "sleep"), "{log}");
    assert!(ev.at("w2", "start") < ev.at("w1", "wake"), "w2 must start while w1 sleeps:\n{log}");
}

fn check_max_active_2(detector: Detector) {
    let rt = runtime(detector);
    let q0 = rt.workqueue("q0").max_active(2).build().unwrap();
    let ev = seed_timeline(&q0, &q0, SleepKind::Plain);
    let log = format!("{}\n{}", ev.render(), rt.dump());
    assert!(ev.at("w1", "start") < ev.at("w0", "wake"), "w1 must start while w0 sleeps:\n{log}");
    let first_end = ev.at("w0", "end").min(ev.at("w1", "end"));
    assert!(ev.at("w2", "start") >= first_end, "w2 must wait for w0 or w1 to finish:\n{log}");
}

fn check_cpu_intensive(detector: Detector) {
    let rt = runtime(detector);
    let q0 = rt.workqueue("q0").build().unwrap();
    let q1 = rt.workqueue("q1").flags(Flags::CPU_INTENSIVE).build().unwrap();
    let ev = seed_timeline(&q0, &q1, SleepKind::Plain);
    let log = ev.render();
    for w in ["w1", "w2"] {
        assert!(ev.at(w, "start") >= ev.at("w0", "sleep"), "{log}");
        assert!(ev.at(w, "start") < ev.at("w0", "wake"), "{w} must start while w0 sleeps:\n{log}");
    }
    assert!(ev.at("w2", "start") < ev.at("w1", "sleep"), "w2 must not wait for w1:\n{log}");
}

#[test]
fn auto_detector_resolves_to_a_real_one_here() {
    let _cpu0 = common::cpu0();
    let rt = runtime(Detector::Auto);
    let (kind, why) = rt.detector();
    assert_ne!(kind, Detector::Auto);
    assert!(rt.dump().contains(&format!("Sleep detector: {kind}")), "{}", rt.dump());
    assert!(!why.is_empty());
}

#[test]
fn auto_timeline_max_active_3() {
    let _cpu0 = common::cpu0();
    check_max_active_3(Detector::Auto);
}

#[test]
fn auto_timeline_max_active_2() {
    let _cpu0 = common::cpu0();
    check_max_active_2(Detector::Auto);
}

#[test]
fn auto_timeline_cpu_intensive() {
    let _cpu0 = common::cpu0();
    check_cpu_intensive(Detector::Auto);
}

#[test]
fn procfs_timeline_max_active_3() {
    let _cpu0 = common::cpu0();
    check_max_active_3(Detector::Procfs);
}

#[test]
fn procfs_timeline_max_active_2() {
    let _cpu0 = common::cpu0();
    check_max_active_2(Detector::Procfs);
}

#[test]
fn procfs_timeline_cpu_intensive() {
    let _cpu0 = common::cpu0();
    check_cpu_intensive(Detector::Procfs);
}

#[test]
fn explicit_only_does_not_see_plain_sleeps() {
    let _cpu0 = common::cpu0();
    let rt = runtime(Detector::ExplicitOnly);
    let q0 = rt.workqueue("q0").build().unwrap();
    let ev = seed_timeline(&q0, &q0, SleepKind::Plain);
    // Without a detector the pool behaves like the original, non-cmwq wq.
    assert!(ev.at("w1", "start") >= ev.at("w0", "end"), "{}", ev.render());
    assert!(ev.at("w2", "start") >= ev.at("w1", "end"), "{}", ev.render());
}

/// A 50 ms hog with an item queued behind it on a one-CPU runtime whose
/// hog threshold is 10 ms: the item must start before the hog ends.
fn check_hog_lets_the_next_item_run() {
    let rt = Runtime::builder().cpus([0]).cpu_hog_threshold(Duration::from_millis(10)).build().unwrap();
    let wq = rt.workqueue("hog").build().unwrap();
    let ev = Events::default();
    let (e1, e2) = (ev.clone(), ev.clone());
    let hog = wq
        .submit(move || {
            e1.record("hog", "start");
            burn(Duration::from_millis(50));
            e1.record("hog", "end");
        })
        .unwrap();
    let other = wq.submit(move || e2.record("other", "start")).unwrap();
    hog.wait().unwrap();
    other.wait().unwrap();
    wq.flush().unwrap();
    assert!(ev.at("other", "start") < ev.at("hog", "end"), "the hog held its CPU to the end:\n{}", ev.render());
    assert_eq!(wq.stats().cpu_hogs, 1, "{:?}", wq.stats());
}

#[test]
fn a_cpu_hog_stops_holding_its_cpu_once_past_the_threshold() {
    let _cpu0 = common::cpu0();
    check_hog_lets_the_next_item_run();
}

/// Being preempted is not sleeping: a hog that shares its CPU with two
/// busy threads gets a third of it, and is still marked once it used the
/// threshold's CPU time (the kernel counts CPU time without sleeping,
/// whatever the wall time).
#[test]
fn a_cpu_hog_sharing_its_cpu_with_busy_threads_is_still_marked() {
    let _cpu0 = common::cpu0();
    // Two spinners on CPU 0, from a runtime of their own, until `stop` drops.
    let busy = Runtime::builder().cpus([0]).build().unwrap();
    let spinners = busy.workqueue("spinners").flags(Flags::CPU_INTENSIVE).build().unwrap();
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }
    let stop = Stop(Arc::new(AtomicBool::new(false)));
    let spinning = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let (s, n) = (stop.0.clone(), spinning.clone());
        spinners
            .execute(move || {
                n.fetch_add(1, SeqCst);
                while !s.load(SeqCst) {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
    }
    wait_until("both spinners run", || spinning.load(SeqCst) == 2);
    check_hog_lets_the_next_item_run();
    drop(stop);
}

#[test]
fn explicit_hook_and_detector_do_not_double_count() {
    let _cpu0 = common::cpu0();
    let rt = runtime(Detector::Auto);
    let wq = rt.workqueue("both").build().unwrap();
    let items: Vec<_> = (0..20)
        .map(|i| {
            wq.submit(move || {
                if i % 2 == 0 {
                    wq_core::blocking(|| thread::sleep(Duration::from_millis(3)));
                } else {
                    thread::sleep(Duration::from_millis(3));
                }
            })
            .unwrap()
        })
        .collect();
    for c in items {
        c.wait().unwrap();
    }
    wq.flush().unwrap();
    assert_pools_settle(&rt);
}

/// Heavy mixed load — burns, plain sleeps, hooked sleeps, hogs, CPU-intensive
/// and highpri queues — then every pool's `nr_running` must return to 0.
#[test]
fn nr_running_returns_to_zero_after_mixed_load() {
    let _cpu0 = common::cpu0();
    let rt = Runtime::builder().detector(Detector::Auto).cpu_hog_threshold(Duration::from_millis(2)).build().unwrap();
    let queues = [
        rt.workqueue("plain").build().unwrap(),
        rt.workqueue("hi").flags(Flags::HIGHPRI).build().unwrap(),
        rt.workqueue("cpu").flags(Flags::CPU_INTENSIVE).build().unwrap(),
        rt.workqueue("ub").flags(Flags::UNBOUND).build().unwrap(),
        rt.workqueue("ord").ordered().build().unwrap(),
    ];
    let done = Arc::new(AtomicUsize::new(0));
    let mut n = 0;
    for round in 0..300 {
        for (qi, q) in queues.iter().enumerate() {
            let d = done.clone();
            n += 1;
            q.execute(move || {
                match (round + qi) % 4 {
                    0 => burn(Duration::from_micros(200)),
                    1 => thread::sleep(Duration::from_micros(300)),
                    2 => wq_core::blocking(|| thread::sleep(Duration::from_micros(300))),
                    _ => burn(Duration::from_millis(3)),
                }
                d.fetch_add(1, SeqCst);
            })
            .unwrap();
        }
    }
    for q in &queues {
        q.flush().unwrap();
    }
    assert_eq!(done.load(SeqCst), n);
    assert_pools_settle(&rt);
}

fn assert_pools_settle(rt: &Runtime) {
    wait_until("every pool is idle with nr_running 0", || {
        rt.stats().pools.iter().all(|p| p.running == 0 && p.pending == 0 && p.idle == p.workers)
    });
}

#[test]
fn ignore_sleeps_keeps_the_worker_counted_as_running() {
    let _cpu0 = common::cpu0();
    let rt = runtime(Detector::Auto);
    let q = rt.workqueue("gil").max_active(3).build().unwrap();
    let ev = Events::default();
    let mut done = Vec::new();
    for name in ["a", "b"] {
        let ev = ev.clone();
        done.push(
            q.submit(move || {
                ev.record(name, "start");
                wq_core::ignore_sleeps(|| thread::sleep(2 * UNIT));
                ev.record(name, "end");
            })
            .unwrap(),
        );
    }
    for d in done {
        d.wait().unwrap();
    }
    assert!(ev.at("b", "start") >= ev.at("a", "end"), "an ignored sleep started a worker:\n{}", ev.render());
}

/// Two items on a one-CPU pool, `a` first; `a` runs `wait` under
/// `min_sleep(4 units)`. Returns whether `b` started before `a` ended.
fn second_starts_during_first(wait: fn()) -> bool {
    let rt = runtime(Detector::Auto);
    let q = rt.workqueue("short-waits").max_active(3).build().unwrap();
    let ev = Events::default();
    let (ea, eb) = (ev.clone(), ev.clone());
    let a = q
        .submit(move || {
            ea.record("a", "start");
            wq_core::min_sleep(4 * UNIT, wait);
            ea.record("a", "end");
        })
        .unwrap();
    let b = q.submit(move || eb.record("b", "start")).unwrap();
    a.wait().unwrap();
    b.wait().unwrap();
    ev.at("b", "start") < ev.at("a", "end")
}

#[test]
fn min_sleep_ignores_short_futex_waits() {
    let _cpu0 = common::cpu0();
    // Condition-variable waits (futex), each shorter than the minimum: like
    // a Python worker waiting for the GIL, not worth another worker.
    let futex_waits = || {
        let (lock, cv) = (std::sync::Mutex::new(()), std::sync::Condvar::new());
        let mut guard = lock.lock().unwrap();
        for _ in 0..4 {
            guard = cv.wait_timeout(guard, UNIT / 2).unwrap().0;
        }
    };
    assert!(!second_starts_during_first(futex_waits), "a futex wait below min_sleep started a worker");
}

#[test]
fn min_sleep_still_acts_on_timer_sleeps() {
    let _cpu0 = common::cpu0();
    // A timer sleep is I/O-like: another worker takes over at once.
    assert!(second_starts_during_first(|| thread::sleep(2 * UNIT)), "a timer sleep under min_sleep went unseen");
}
