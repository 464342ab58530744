//! Bad input everywhere: every public function given invalid arguments
//! returns an error of the right variant whose message names the offending
//! value — never a panic, a hang, or a silent drop.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::Duration;

use wq_core::{Attrs, DelayedWork, Error, Flags, Runtime, Topology, TopologyError, Work, Workqueue};

/// How long a call may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(10);

/// Asserts that `$expr` failed with an error matching `$pat` whose
/// message contains every needle; gives the error back.
macro_rules! refused {
    ($expr:expr, $pat:pat, $($needle:expr),+ $(,)?) => {{
        let err = match $expr {
            Ok(v) => panic!("`{}` was accepted: {:?}", stringify!($expr), v),
            Err(e) => e,
        };
        assert!(matches!(err, $pat), "`{}`: wrong error variant {:?}", stringify!($expr), err);
        let text = err.to_string();
        $(assert!(text.contains($needle), "`{}`: message {:?} does not name {:?}", stringify!($expr), text, $needle);)+
        err
    }};
}

fn one_cpu() -> Runtime {
    Runtime::builder().cpus([0]).build().unwrap()
}

fn counter_work() -> (Work, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    (
        Work::new(move || {
            r.fetch_add(1, SeqCst);
        }),
        runs,
    )
}

#[test]
fn workqueue_names_are_checked() {
    let rt = one_cpu();
    refused!(rt.workqueue("").build(), Error::EmptyName, "empty");
    let long = "q".repeat(65);
    refused!(rt.workqueue(&long).build(), Error::NameTooLong { len: 65 }, "65", "64");
    // The limit is in bytes: 33 two-byte characters are too long.
    refused!(rt.workqueue(&"é".repeat(33)).build(), Error::NameTooLong { len: 66 }, "66");
    assert!(rt.workqueue(&"q".repeat(64)).build().is_ok(), "a 64-byte name is allowed");
    refused!(rt.workqueue("bad\0name").build(), Error::NameHasNul { .. }, "NUL", "bad\\0name");
    // A newline forged a row of `wq monitor`'s table; an escape sequence
    // reached the terminal.
    refused!(rt.workqueue("real\nfake-q 123").build(), Error::NameHasControl { .. }, "control", "real\\nfake-q");
    refused!(rt.workqueue("\u{1b}[2J").build(), Error::NameHasControl { .. }, "control");
    // A bidirectional override reorders the rest of a row on the terminal.
    refused!(rt.workqueue("q\u{202e}321").build(), Error::NameHasControl { .. }, "control");
    refused!(rt.workqueue("q\u{2066}x").build(), Error::NameHasControl { .. }, "control");
    // Other non-ASCII text is a fine name.
    assert!(rt.workqueue("é-β-队列").build().is_ok());
}

#[test]
fn absurd_max_active_is_refused() {
    let rt = one_cpu();
    refused!(rt.workqueue("q").max_active(2049).build(), Error::MaxActiveTooLarge { requested: 2049 }, "2049", "2048");
    refused!(rt.workqueue("q").max_active(u32::MAX).build(), Error::MaxActiveTooLarge { .. }, "4294967295");
    assert_eq!(rt.workqueue("q").max_active(2048).build().unwrap().max_active(), 2048);
    assert_eq!(rt.workqueue("q").max_active(0).build().unwrap().max_active(), wq_core::DEFAULT_MAX_ACTIVE);
}

#[test]
fn conflicting_flags_are_refused() {
    let rt = one_cpu();
    refused!(rt.workqueue("q").ordered().max_active(2).build(), Error::ConflictingFlags(_), "ordered", "max_active");
    refused!(
        rt.workqueue("q").ordered().flags(Flags::CPU_INTENSIVE).build(),
        Error::ConflictingFlags(_),
        "ordered",
        "CPU_INTENSIVE"
    );
    refused!(rt.workqueue("q").attrs(Attrs::default()).build(), Error::ConflictingFlags(_), "unbound");
    // What is allowed with ordered stays allowed.
    let wq = rt.workqueue("q").ordered().max_active(1).flags(Flags::HIGHPRI).build().unwrap();
    assert!(wq.is_ordered() && wq.max_active() == 1);
    refused!(rt.workqueue("b").build().unwrap().apply_attrs(Attrs::default()), Error::ConflictingFlags(_), "unbound");
    refused!(wq.apply_attrs(Attrs::default()), Error::ConflictingFlags(_), "ordered");
}

#[test]
fn unknown_flag_bits_are_refused() {
    let rt = one_cpu();
    let flags = Flags::from_bits_retain(1 << 20);
    let err = rt.workqueue("q").flags(flags).build().expect_err("a flag bit that means nothing was accepted");
    assert!(err.to_string().contains("0x100000"), "{err} does not name the unknown bits");
}

#[test]
fn cpus_the_runtime_does_not_manage_are_refused() {
    let rt = one_cpu();
    let wq = rt.workqueue("q").build().unwrap();
    let (work, runs) = counter_work();
    for cpu in [1, 4000, usize::MAX] {
        refused!(wq.queue_on(cpu, &work), Error::InvalidCpu { .. }, &cpu.to_string(), "[0]");
        assert!(!work.is_pending(), "a refused queue_on left the item pending");
    }
    let dwork = DelayedWork::new(|| {});
    refused!(wq.queue_delayed_on(7, &dwork, Duration::from_millis(1)), Error::InvalidCpu { cpu: 7, .. }, "CPU 7");
    refused!(wq.queue_delayed_on(7, &dwork, Duration::ZERO), Error::InvalidCpu { cpu: 7, .. }, "CPU 7");
    assert!(!dwork.is_pending());
    // The item is usable after the refusals.
    assert!(wq.queue_on(0, &work).unwrap());
    work.flush().unwrap();
    assert_eq!(runs.load(SeqCst), 1);
}

#[test]
fn bad_runtime_cpu_sets_are_refused() {
    refused!(Runtime::builder().cpus([]).build(), Error::NoCpus, "empty");
    refused!(Runtime::builder().cpus([0, 4000]).build(), Error::InvalidCpu { cpu: 4000, .. }, "4000");
    refused!(Runtime::builder().cpus([usize::MAX]).build(), Error::InvalidCpu { .. }, &usize::MAX.to_string());
    // Duplicates are harmless.
    assert_eq!(Runtime::builder().cpus([0, 0]).build().unwrap().cpus(), &[0]);
    let rt = one_cpu();
    let attrs = |cpus: Vec<usize>| Attrs { cpus: Some(cpus), ..Attrs::default() };
    // Bad attributes are named as the queue's, not as the runtime's.
    refused!(
        rt.workqueue("q").flags(Flags::UNBOUND).attrs(attrs(vec![])).build(),
        Error::InvalidAttrs(_),
        "workqueue attributes",
        "empty CPU set"
    );
    refused!(
        rt.workqueue("q").flags(Flags::UNBOUND).attrs(attrs(vec![9])).build(),
        Error::InvalidCpu { cpu: 9, .. },
        "9"
    );
    let unbound = rt.workqueue("u").flags(Flags::UNBOUND).build().unwrap();
    refused!(unbound.apply_attrs(attrs(vec![9])), Error::InvalidCpu { cpu: 9, .. }, "9");
    refused!(
        unbound.apply_attrs(Attrs { nice: 42, ..Attrs::default() }),
        Error::InvalidAttrs(_),
        "workqueue attributes",
        "nice 42"
    );
    refused!(unbound.apply_attrs(attrs(vec![])), Error::InvalidAttrs(_), "workqueue attributes", "empty CPU set");
}

#[test]
fn bad_runtime_settings_are_refused() {
    let b = || Runtime::builder().cpus([0]);
    refused!(b().idle_timeout(Duration::ZERO).build(), Error::InvalidConfig(_), "idle_timeout");
    refused!(b().cpu_hog_threshold(Duration::ZERO).build(), Error::InvalidConfig(_), "cpu_hog_threshold");
    refused!(b().watchdog_threshold(Duration::ZERO).build(), Error::InvalidConfig(_), "watchdog_threshold");
    refused!(b().max_workers(0).build(), Error::InvalidConfig(_), "max_workers 0");
    refused!(b().max_workers(3).build(), Error::InvalidConfig(_), "max_workers 3");
}

/// Every pool keeps its first worker, so a pool made after `build` (a
/// queue with attributes of its own) needs room under `max_workers`: at
/// the cap of one worker per built-in pool it would never get a worker and
/// its items would wait for ever, so the queue is refused instead.
#[test]
fn a_pool_beyond_max_workers_is_refused_and_one_within_it_runs() {
    // One CPU: two bound pools and two default unbound ones.
    let at_cap = Runtime::builder().cpus([0]).max_workers(4).build().unwrap();
    let nice = |n| Attrs { nice: n, ..Attrs::default() };
    for flags in [Flags::UNBOUND, Flags::UNBOUND | Flags::HIGHPRI] {
        let q = at_cap.workqueue("default").flags(flags).build().unwrap();
        assert_eq!(q.submit(|| 1).unwrap().wait().unwrap(), 1, "the default pools were counted");
    }
    refused!(
        at_cap.workqueue("niced").flags(Flags::UNBOUND).attrs(nice(5)).build(),
        Error::InvalidConfig(_),
        "max_workers 4",
        "nice 5"
    );
    let unbound = at_cap.workqueue("u").flags(Flags::UNBOUND).build().unwrap();
    refused!(unbound.apply_attrs(nice(5)), Error::InvalidConfig(_), "max_workers 4");
    assert_eq!(unbound.submit(|| 2).unwrap().wait().unwrap(), 2, "a refused apply_attrs keeps the queue");

    let one_more = Runtime::builder().cpus([0]).max_workers(5).build().unwrap();
    let niced = one_more.workqueue("niced").flags(Flags::UNBOUND).attrs(nice(5)).build().unwrap();
    let again = one_more.workqueue("same").flags(Flags::UNBOUND).attrs(nice(5)).build().unwrap();
    assert_eq!(niced.submit(|| 3).unwrap().wait().unwrap(), 3);
    assert_eq!(again.submit(|| 4).unwrap().wait().unwrap(), 4, "a second queue shares the pool");
    refused!(
        one_more.workqueue("nicer").flags(Flags::UNBOUND).attrs(nice(6)).build(),
        Error::InvalidConfig(_),
        "max_workers 5",
        "6 pools"
    );
}

/// A runtime built with `setting` either is refused naming it, or works.
fn huge_setting_works_or_is_refused(name: &str, builder: wq_core::RuntimeBuilder) {
    let rt = match builder.build() {
        Err(err) => {
            assert!(matches!(err, Error::InvalidConfig(_)), "{name}: {err:?}");
            assert!(err.to_string().contains(name), "{err} does not name {name}");
            return;
        }
        Ok(rt) => rt,
    };
    let wq = rt.workqueue("q").build().unwrap();
    // Twice, so a worker goes idle (and computes its idle deadline) in between.
    for _ in 0..2 {
        let c = wq.submit(|| wq_core::blocking(|| thread::sleep(Duration::from_millis(5)))).unwrap();
        assert!(c.wait_timeout(PATIENCE), "{name} = Duration::MAX was accepted and the runtime does not run items");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_idle_timeout_of_duration_max_works_or_is_refused() {
    huge_setting_works_or_is_refused("idle_timeout", Runtime::builder().cpus([0]).idle_timeout(Duration::MAX));
}

#[test]
fn a_cpu_hog_threshold_of_duration_max_works_or_is_refused() {
    huge_setting_works_or_is_refused(
        "cpu_hog_threshold",
        Runtime::builder().cpus([0]).cpu_hog_threshold(Duration::MAX),
    );
}

#[test]
fn a_watchdog_threshold_of_duration_max_works_or_is_refused() {
    huge_setting_works_or_is_refused(
        "watchdog_threshold",
        Runtime::builder().cpus([0]).watchdog_threshold(Duration::MAX),
    );
}

// `{ .. }` so the patterns still match once the variant carries the delay.
#[allow(clippy::unneeded_struct_pattern)]
#[test]
fn unrepresentable_delays_are_refused_naming_the_delay() {
    let rt = one_cpu();
    let wq = rt.workqueue("q").build().unwrap();
    let dwork = DelayedWork::new(|| {});
    let max = format!("{:?}", Duration::MAX);
    refused!(wq.try_queue_delayed(&dwork, Duration::MAX), Error::DelayTooLong { .. }, &max);
    refused!(wq.mod_delayed(&dwork, Duration::MAX), Error::DelayTooLong { .. }, &max);
    refused!(wq.queue_delayed_on(0, &dwork, Duration::MAX), Error::DelayTooLong { .. }, &max);
    assert!(!wq.queue_delayed(&dwork, Duration::MAX), "the bool form reports the refusal as false");
    assert!(!dwork.is_pending(), "a refused delay left the item pending");
}

#[test]
fn zero_and_huge_but_representable_delays_work() {
    let rt = one_cpu();
    let wq = rt.workqueue("q").build().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let dwork = DelayedWork::new(move || {
        r.fetch_add(1, SeqCst);
    });
    assert!(wq.try_queue_delayed(&dwork, Duration::ZERO).unwrap());
    dwork.flush().unwrap();
    assert_eq!(runs.load(SeqCst), 1);
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    assert!(wq.try_queue_delayed(&dwork, century).unwrap());
    assert!(dwork.is_pending());
    assert!(wq.mod_delayed(&dwork, century).unwrap(), "it was pending");
    refused!(wq.destroy(), Error::DelayedWorkArmed { .. }, &dwork.id().to_string(), "q");
    assert!(dwork.cancel());
    assert!(!dwork.cancel_sync().unwrap());
    assert!(!dwork.flush().unwrap(), "nothing left to flush");
    assert_eq!(runs.load(SeqCst), 1);
    wq.destroy().unwrap();
}

/// Runs `f` inside an item of `wq` and gives back what it returned.
fn from_inside<T: Send + 'static>(wq: &Workqueue, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    wq.execute(move || tx.send(f()).unwrap()).unwrap();
    rx.recv_timeout(PATIENCE).expect("the call from inside the item hangs")
}

#[test]
fn waiting_for_its_own_queue_from_inside_an_item_is_refused() {
    let rt = one_cpu();
    let wq = rt.workqueue("selfish").flags(Flags::FREEZABLE).build().unwrap();
    let other = rt.workqueue("other").build().unwrap();
    let (w, o, r) = (wq.clone(), other.clone(), rt.clone());
    let (flush, drain, destroy, flush_other, freeze) =
        from_inside(&wq, move || (w.flush(), w.drain(), w.destroy(), o.flush(), r.freeze()));
    refused!(flush, Error::WouldDeadlock(_), "flush", "selfish");
    refused!(drain, Error::WouldDeadlock(_), "drain", "selfish");
    refused!(destroy, Error::WouldDeadlock(_), "destroy", "selfish");
    refused!(freeze, Error::WouldDeadlock(_), "freeze");
    flush_other.expect("flushing another queue from an item is fine");
    assert!(!wq.is_destroyed());
}

#[test]
fn waiting_for_an_item_from_inside_itself_is_refused() {
    let rt = one_cpu();
    let wq = rt.workqueue("q").build().unwrap();
    let me: Arc<OnceLock<Work>> = Arc::new(OnceLock::new());
    let (tx, rx) = mpsc::channel();
    let me2 = me.clone();
    let work = Work::new(move || {
        let w = me2.get().unwrap();
        tx.send((w.cancel_sync(), w.flush())).unwrap();
    });
    me.set(work.clone()).unwrap();
    assert!(wq.queue(&work));
    let (cancel_sync, flush) = rx.recv_timeout(PATIENCE).expect("the item deadlocked");
    refused!(cancel_sync, Error::WouldDeadlock(_), "cancel_sync");
    refused!(flush, Error::WouldDeadlock(_), "flush");

    let dme: Arc<OnceLock<DelayedWork>> = Arc::new(OnceLock::new());
    let (tx, rx) = mpsc::channel();
    let dme2 = dme.clone();
    let dwork = DelayedWork::new(move || {
        let d = dme2.get().unwrap();
        tx.send((d.cancel_sync(), d.flush())).unwrap();
    });
    dme.set(dwork.clone()).unwrap();
    assert!(wq.queue_delayed(&dwork, Duration::from_millis(1)));
    let (cancel_sync, flush) = rx.recv_timeout(PATIENCE).expect("the delayed item deadlocked");
    refused!(cancel_sync, Error::WouldDeadlock(_), "cancel_sync");
    refused!(flush, Error::WouldDeadlock(_), "flush");
}

#[test]
fn a_destroyed_queue_refuses_everything_by_name() {
    let rt = one_cpu();
    let wq = rt.workqueue("gone").build().unwrap();
    wq.destroy().unwrap();
    let (work, runs) = counter_work();
    let dwork = DelayedWork::new(|| {});
    refused!(wq.try_queue(&work), Error::Destroyed { .. }, "gone");
    refused!(wq.queue_on(0, &work), Error::Destroyed { .. }, "gone");
    refused!(wq.try_queue_delayed(&dwork, Duration::from_millis(1)), Error::Destroyed { .. }, "gone");
    refused!(wq.try_queue_delayed(&dwork, Duration::ZERO), Error::Destroyed { .. }, "gone");
    refused!(wq.queue_delayed_on(0, &dwork, Duration::ZERO), Error::Destroyed { .. }, "gone");
    refused!(wq.mod_delayed(&dwork, Duration::from_millis(1)), Error::Destroyed { .. }, "gone");
    refused!(wq.submit(|| 1), Error::Destroyed { .. }, "gone");
    refused!(wq.execute(|| {}), Error::Destroyed { .. }, "gone");
    assert!(!wq.queue(&work) && !wq.queue_delayed(&dwork, Duration::ZERO));
    assert!(!work.is_pending() && !dwork.is_pending(), "a refused item was left pending");
    assert_eq!(wq.stats().refused, 10, "WorkqueueStats::refused missed some of the ten refusals above");
    // Group operations on a destroyed queue are harmless no-ops.
    wq.flush().unwrap();
    wq.drain().unwrap();
    let again = wq.destroy();
    assert!(again.is_ok() || matches!(again, Err(Error::Destroyed { .. })), "{again:?}");
    assert_eq!(runs.load(SeqCst), 0);
}

#[test]
fn idle_items_answer_at_once() {
    let (work, _) = counter_work();
    assert!(!work.cancel() && !work.cancel_sync().unwrap() && !work.flush().unwrap());
    let dwork = DelayedWork::new(|| {});
    assert!(!dwork.cancel() && !dwork.cancel_sync().unwrap() && !dwork.flush().unwrap());
    let wq = one_cpu().workqueue("q").build().unwrap();
    let c = wq.submit(|| 3).unwrap();
    assert!(c.wait_timeout(Duration::MAX), "an unbounded wait_timeout returns once the item finished");
    assert!(c.wait_timeout(Duration::ZERO));
    assert_eq!(c.wait().unwrap(), 3);
}

#[test]
fn the_global_runtime_is_initialised_once() {
    let a = Runtime::global();
    let b = Runtime::try_global().unwrap();
    assert!(std::ptr::eq(a, b));
    let wq = Workqueue::builder("global-q").build().unwrap();
    assert_eq!(wq.runtime().cpus(), a.cpus());
    assert!(std::ptr::eq(Runtime::global(), a), "a second call built another runtime");
}

#[test]
fn bad_cpu_lists_and_topologies_are_refused() {
    for bad in ["a", "1-", "-1", "3-1", "0,,1", "0-99999999999999999999999", "1 2"] {
        match Topology::parse_cpu_list(bad) {
            Err(err @ TopologyError::BadCpuList { .. }) => {
                assert!(err.to_string().contains(&format!("{bad:?}")), "{err} does not name {bad:?}")
            }
            other => panic!("{bad:?} parsed as {other:?}"),
        }
    }
    assert_eq!(Topology::parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
    assert!(matches!(Topology::ungrouped(&[]), Err(TopologyError::EmptyCpuSet)));
    let topo = Topology::ungrouped(&[0, 1]).unwrap();
    match topo.restrict(&[9999]) {
        Err(err @ TopologyError::CpusNotAllowed { .. }) => assert!(err.to_string().contains("9999"), "{err}"),
        other => panic!("restrict to CPU 9999 gave {other:?}"),
    }
    assert!(matches!(topo.restrict(&[]), Err(TopologyError::EmptyCpuSet)));
    let err = Topology::from_sysfs(Path::new("/nonexistent/sysfs"), &[0]).map(|t| t.cpus().to_vec());
    if let Err(err) = err {
        assert!(!err.to_string().is_empty());
    }
}
