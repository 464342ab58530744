//! Workqueue policy and group operations.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::block_on;
use wq_core::{Error, Flags, Runtime, SharedItem, Work, Workqueue, MAX_ACTIVE_LIMIT};

#[test]
fn builder_validates_its_input() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    assert!(matches!(rt.workqueue("").build(), Err(Error::EmptyName)));
    assert!(matches!(rt.workqueue(&"x".repeat(65)).build(), Err(Error::NameTooLong { len: 65 })));
    assert!(matches!(rt.workqueue("a\0b").build(), Err(Error::NameHasNul { .. })));
    let too_many = rt.workqueue("q").max_active(MAX_ACTIVE_LIMIT + 1).build();
    assert!(matches!(too_many, Err(Error::MaxActiveTooLarge { requested: 2049 })), "{too_many:?}");
    assert!(matches!(rt.workqueue("q").max_active(4).ordered().build(), Err(Error::ConflictingFlags(_))));
    let q = rt.workqueue("q").max_active(0).build().unwrap();
    assert_eq!(q.max_active(), 1024);
    let q = rt.workqueue("q").max_active(MAX_ACTIVE_LIMIT).build().unwrap();
    assert_eq!(q.max_active(), 2048);
    let o = rt.workqueue("o").ordered().build().unwrap();
    assert!(o.is_ordered() && o.flags().contains(Flags::UNBOUND) && o.max_active() == 1);
    let err = rt.workqueue("").build().unwrap_err().to_string();
    assert!(err.contains("name is empty"), "{err}");
}

/// Detached and kept `submit`s from two threads on one unbound queue, so
/// allocations handed back by workers (`wq_core::recycle`) serve later
/// ones: every kept `Completion` gets its own result, and every result,
/// taken or not, is dropped exactly once.
#[test]
fn recycled_submits_keep_their_results_apart() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct Tracked(u64);
    impl Drop for Tracked {
        fn drop(&mut self) {
            DROPS.fetch_add(1, SeqCst);
        }
    }
    let wq = Workqueue::builder("submit_recycled").flags(Flags::UNBOUND).build().unwrap();
    let per_thread = 20_000u64;
    let submitters: Vec<_> = (0..2u64)
        .map(|s| {
            let wq = wq.clone();
            thread::spawn(move || {
                let mut kept = Vec::new();
                for i in 0..per_thread {
                    let id = s * per_thread + i;
                    let completion = wq.submit(move || Tracked(id)).unwrap();
                    if i % 3 == 0 {
                        kept.push((id, completion));
                    }
                }
                for (id, completion) in kept {
                    assert_eq!(completion.wait().unwrap().0, id, "a Completion got another closure's result");
                }
            })
        })
        .collect();
    submitters.into_iter().for_each(|t| t.join().unwrap());
    wq.flush().unwrap();
    assert_eq!(DROPS.load(SeqCst), 2 * per_thread as usize, "a result was dropped twice or kept");
}

/// A `Completion` polled (its waker registered) and then dropped leaves
/// its waker in the task; the worker that keeps the task's allocation for
/// reuse (`wq_core::recycle`) must drop that waker first, not keep it
/// alive until the allocation is reused.
#[test]
fn a_recycled_submit_keeps_no_waker_of_a_dropped_completion() {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let wq = Workqueue::builder("submit_recycled_waker").flags(Flags::UNBOUND).build().unwrap();
    let waker_alive = Arc::new(Noop);
    let waker = std::task::Waker::from(waker_alive.clone());
    let (release, gate) = mpsc::channel::<()>();
    let mut completion = wq.submit(move || gate.recv().unwrap()).unwrap();
    let pending = std::pin::Pin::new(&mut completion).poll(&mut std::task::Context::from_waker(&waker));
    assert!(pending.is_pending());
    drop((completion, waker));
    assert_eq!(Arc::strong_count(&waker_alive), 2, "the task holds the registered waker");
    release.send(()).unwrap();
    wq.flush().unwrap();
    assert_eq!(Arc::strong_count(&waker_alive), 1, "the finished, detached task still holds the waker");
}

#[test]
fn ordered_queue_runs_strictly_fifo_one_at_a_time() {
    let wq = Workqueue::builder("ordered").ordered().build().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    for i in 0..300 {
        let (order, inside, overlaps) = (order.clone(), inside.clone(), overlaps.clone());
        wq.execute(move || {
            if inside.fetch_add(1, SeqCst) != 0 {
                overlaps.fetch_add(1, SeqCst);
            }
            if i % 50 == 0 {
                // A sleeping item must not let the next one start.
                wq_core::blocking(|| thread::sleep(Duration::from_millis(20)));
            }
            order.lock().unwrap().push(i);
            inside.fetch_sub(1, SeqCst);
        })
        .unwrap();
    }
    wq.flush().unwrap();
    assert_eq!(overlaps.load(SeqCst), 0);
    assert_eq!(*order.lock().unwrap(), (0..300).collect::<Vec<_>>());
}

/// Items of a bound `max_active = 2` queue that all sleep: concurrency
/// management would start more, `max_active` must not let it.
#[test]
fn max_active_is_honoured_per_cpu_on_bound_queues() {
    let rt = Runtime::builder().build().unwrap();
    let cpus = rt.cpus().to_vec();
    let wq = rt.workqueue("limited").max_active(2).build().unwrap();
    let now: Arc<Vec<AtomicUsize>> = Arc::new((0..=*cpus.iter().max().unwrap()).map(|_| AtomicUsize::new(0)).collect());
    let peak: Arc<Vec<AtomicUsize>> = Arc::new((0..now.len()).map(|_| AtomicUsize::new(0)).collect());
    for &cpu in &cpus {
        for _ in 0..12 {
            let (now, peak) = (now.clone(), peak.clone());
            let w = Work::new(move || {
                let n = now[cpu].fetch_add(1, SeqCst) + 1;
                peak[cpu].fetch_max(n, SeqCst);
                wq_core::blocking(|| thread::sleep(Duration::from_millis(20)));
                now[cpu].fetch_sub(1, SeqCst);
            });
            assert!(wq.queue_on(cpu, &w).unwrap());
        }
    }
    wq.flush().unwrap();
    for &cpu in &cpus {
        assert_eq!(peak[cpu].load(SeqCst), 2, "CPU {cpu}: peak in flight must be exactly max_active");
    }
    assert_eq!(wq.stats().total, 12 * cpus.len() as u64);
}

#[test]
fn unbound_max_active_limits_the_whole_queue() {
    let rt = Runtime::builder().build().unwrap();
    let wq = rt.workqueue("u").flags(Flags::UNBOUND).max_active(3).build().unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    for _ in 0..20 {
        let (now, peak) = (now.clone(), peak.clone());
        let _ = wq.execute(move || {
            peak.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
            wq_core::blocking(|| thread::sleep(Duration::from_millis(10)));
            now.fetch_sub(1, SeqCst);
        });
    }
    wq.flush().unwrap();
    assert_eq!(peak.load(SeqCst), 3);
}

#[test]
fn flush_waits_for_items_queued_before_it_only() {
    let wq = Workqueue::builder("flush").build().unwrap();
    let before_done = Arc::new(AtomicUsize::new(0));
    for _ in 0..4 {
        let d = before_done.clone();
        let _ = wq.execute(move || {
            wq_core::blocking(|| thread::sleep(Duration::from_millis(200)));
            d.fetch_add(1, SeqCst);
        });
    }
    let (started_tx, started_rx) = mpsc::channel();
    let (flushed_tx, flushed_rx) = mpsc::channel();
    let wq2 = wq.clone();
    let flusher = thread::spawn(move || {
        started_tx.send(()).unwrap();
        wq2.flush().unwrap();
        flushed_tx.send(()).unwrap();
    });
    // Queued after flush started: it waits until flush returned, so a flush
    // that waited for it would never return. The flusher thread is a few
    // instructions from starting its flush once it signals; the 50 ms are
    // for a loaded machine (the test used to wait 5 ms from the spawn,
    // and under a busy loop the flush sometimes began after this item was
    // queued), and the earlier items sleep well past them.
    started_rx.recv().unwrap();
    thread::sleep(Duration::from_millis(50));
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let after = wq.submit(move || wq_core::blocking(|| release_rx.recv().unwrap())).unwrap();
    flushed_rx.recv_timeout(Duration::from_secs(20)).expect("flush waited for an item queued after it");
    assert_eq!(before_done.load(SeqCst), 4, "flush returned before the earlier items finished");
    assert!(!after.is_finished());
    release_tx.send(()).unwrap();
    after.wait().unwrap();
    flusher.join().unwrap();
}

#[test]
fn drain_lets_the_queues_own_items_chain_and_refuses_others() {
    let wq = Workqueue::builder("drain").build().unwrap();
    let links = Arc::new(AtomicUsize::new(0));
    fn chain(wq: Workqueue, links: Arc<AtomicUsize>) {
        let wq2 = wq.clone();
        let _ = wq.execute(move || {
            wq_core::blocking(|| thread::sleep(Duration::from_millis(10)));
            if links.fetch_add(1, SeqCst) + 1 < 25 {
                chain(wq2, links);
            }
        });
    }
    chain(wq.clone(), links.clone());
    let wq2 = wq.clone();
    let drainer = thread::spawn(move || wq2.drain());
    let mut refused = false;
    while !drainer.is_finished() {
        match wq.execute(|| {}) {
            Err(Error::Draining { queue }) => {
                assert_eq!(queue, "drain");
                refused = true;
                break;
            }
            Ok(()) | Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
    drainer.join().unwrap().unwrap();
    assert_eq!(links.load(SeqCst), 25, "drain returned before the chain ended");
    assert!(refused, "outside queueing during drain was not refused");
    wq.execute(|| {}).expect("the queue takes work again after drain");
    wq.flush().unwrap();
}

#[test]
fn destroy_runs_what_is_queued_then_refuses_work() {
    let wq = Workqueue::builder("destroy").build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..50 {
        let r = ran.clone();
        wq.execute(move || {
            r.fetch_add(1, SeqCst);
        })
        .unwrap();
    }
    wq.destroy().unwrap();
    assert_eq!(ran.load(SeqCst), 50, "destroy dropped queued work");
    assert!(wq.is_destroyed());
    let work = Work::new(|| {});
    assert!(matches!(wq.try_queue(&work), Err(Error::Destroyed { .. })));
    assert!(!wq.queue(&work), "queue on a destroyed queue must report false");
    assert!(!work.is_pending(), "a refused item must not stay pending");
    assert!(matches!(wq.submit(|| 1), Err(Error::Destroyed { .. })));
    assert!(wq.stats().refused >= 2);
}

#[test]
fn group_operations_from_the_queues_own_item_are_refused() {
    let wq = Workqueue::builder("self").build().unwrap();
    let wq2 = wq.clone();
    let r = wq.submit(move || (wq2.flush(), wq2.drain(), wq2.destroy())).unwrap();
    let (f, d, x) = r.wait().unwrap();
    assert!(matches!(f, Err(Error::WouldDeadlock(_))));
    assert!(matches!(d, Err(Error::WouldDeadlock(_))));
    assert!(matches!(x, Err(Error::WouldDeadlock(_))));
}

#[test]
fn a_panicking_item_does_not_kill_its_worker() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("panics").build().unwrap();
    let workers_before = rt.stats().workers;
    let c = wq.submit(|| -> u32 { panic!("boom {}", 7) }).unwrap();
    let err = c.wait().unwrap_err();
    assert_eq!(err.message(), "boom 7");
    let w = Work::new(|| panic!("work panics too"));
    wq.queue(&w);
    w.flush().unwrap();
    wq.execute(|| panic!("and closures")).unwrap();
    assert_eq!(wq.submit(|| 5).unwrap().wait().unwrap(), 5);
    wq.flush().unwrap();
    assert_eq!(wq.stats().panics, 3);
    assert_eq!(wq.stats().total, 4);
    assert!(rt.stats().workers >= workers_before, "a worker died");
    let payload = wq.submit(|| std::panic::panic_any(42u8)).unwrap().wait().unwrap_err().into_panic();
    assert_eq!(payload.downcast_ref::<u8>(), Some(&42));
}

#[test]
fn completion_is_a_future_and_can_be_cancelled_before_it_starts() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("fut").ordered().build().unwrap();
    assert_eq!(block_on(wq.submit(|| 40 + 2).unwrap()).unwrap(), 42);
    let (tx, rx) = mpsc::channel::<()>();
    let gate = wq.submit(move || rx.recv().unwrap()).unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let c = wq.submit(move || r.fetch_add(1, SeqCst)).unwrap();
    assert!(c.cancel().is_ok(), "not started yet: cancel must win");
    tx.send(()).unwrap();
    gate.wait().unwrap();
    wq.flush().unwrap();
    assert_eq!(ran.load(SeqCst), 0, "a cancelled closure ran");
    let started = wq.submit(|| 1).unwrap();
    assert!(started.wait_timeout(Duration::from_secs(20)));
    assert!(started.cancel().is_err(), "a finished closure cannot be cancelled");
}

/// Counts its drops: a detached closure's value, and a cancelled one's
/// captures, are dropped exactly once.
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// Detached submits (the Completion dropped before the closure starts) take
/// a path of their own: bound queues, and unbound queues whose tasks are
/// recycled allocations.
#[test]
fn detached_submits_run_once_count_panics_honour_cancel_and_drop_values() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    for unbound in [false, true] {
        let mut b = rt.workqueue("detached").max_active(1);
        if unbound {
            b = b.flags(Flags::UNBOUND);
        }
        let wq = b.build().unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        let gate = wq.submit(move || rx.recv().unwrap()).unwrap();
        let (ran, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        for _ in 0..100 {
            let (r, d) = (ran.clone(), dropped.clone());
            drop(wq.submit(move || {
                r.fetch_add(1, SeqCst);
                Dropped(d)
            }));
        }
        let captured = Dropped(dropped.clone());
        let r = ran.clone();
        let cancelled = wq.submit(move || {
            let _keep = &captured;
            r.fetch_add(1, SeqCst);
        });
        assert!(cancelled.unwrap().cancel().is_ok(), "not started yet: cancel must win");
        drop(wq.submit(|| panic!("detached")));
        tx.send(()).unwrap();
        gate.wait().unwrap();
        wq.flush().unwrap();
        assert_eq!(ran.load(SeqCst), 100, "unbound: {unbound}");
        assert_eq!(dropped.load(SeqCst), 101, "values and the cancelled captures, unbound: {unbound}");
        let s = wq.stats();
        assert_eq!((s.total, s.panics), (102, 1), "unbound: {unbound}");
    }
}

#[test]
fn stats_count_cpu_time_and_in_flight() {
    let wq = Workqueue::builder("stats").flags(Flags::CPU_INTENSIVE).build().unwrap();
    for _ in 0..4 {
        let _ = wq.execute(|| common::burn(Duration::from_millis(5)));
    }
    wq.flush().unwrap();
    let s = wq.stats();
    assert_eq!((s.total, s.in_flight), (4, 0));
    assert!(s.cpu_time >= Duration::from_millis(20), "{s:?}");
}

/// An item that sleeps is charged the CPU time it used, not its wall time,
/// also as the first item of a busy period: with no reading of the
/// worker's CPU clock before it, it was charged its wall time.
#[test]
fn a_sleeping_item_is_charged_its_cpu_time_not_its_wall_time() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("sleepy").build().unwrap();
    // The pool's worker exists, and has parked by the time the item comes.
    wq.submit(|| ()).unwrap().wait().unwrap();
    thread::sleep(Duration::from_millis(50));
    assert_sleeping_item_charged_its_cpu_time(&wq, "a parked worker's");
}

/// Runs an item that burns 20 ms and sleeps 100 ms on `wq` (otherwise
/// unused), and checks the queue was charged about 20 ms, not 120.
fn assert_sleeping_item_charged_its_cpu_time(wq: &Workqueue, whose: &str) {
    let item = wq.submit(|| {
        common::burn(Duration::from_millis(20));
        thread::sleep(Duration::from_millis(100));
    });
    item.unwrap().wait().unwrap();
    wq.flush().unwrap();
    let used = wq.stats().cpu_time;
    assert!(
        (Duration::from_millis(20)..Duration::from_millis(70)).contains(&used),
        "{whose} item, 20 ms burned and 100 ms asleep, was charged {used:?}"
    );
}

/// The same for a new worker's first item (it had no reading either:
/// the tour's first sleeping item read 40 ms for 20 ms of CPU).
#[test]
fn a_new_workers_first_sleeping_item_is_charged_its_cpu_time() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("first").build().unwrap();
    assert_sleeping_item_charged_its_cpu_time(&wq, "a new worker's first");
}

#[test]
fn highpri_workers_run_at_the_priority_the_os_granted() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let wq = rt.workqueue("hi").flags(Flags::HIGHPRI).build().unwrap();
    let nice = wq.submit(thread_nice).unwrap().wait().unwrap();
    let pool = rt.stats().pools.into_iter().find(|p| p.highpri && p.cpu == Some(0)).unwrap();
    assert_eq!(nice, pool.nice_granted.unwrap_or(0), "{pool:?}");
    let normal = rt.workqueue("lo").build().unwrap();
    assert_eq!(normal.submit(thread_nice).unwrap().wait().unwrap(), 0);
}

#[test]
fn an_unbound_queue_with_a_positive_nice_runs_its_workers_at_it() {
    let rt = Runtime::builder().cpus([0]).build().unwrap();
    let attrs = wq_core::Attrs { nice: 7, ..wq_core::Attrs::default() };
    let wq = rt.workqueue("bg").flags(Flags::UNBOUND).attrs(attrs).build().unwrap();
    assert_eq!(wq.submit(thread_nice).unwrap().wait().unwrap(), 7);
    let pool = rt.stats().pools.into_iter().find(|p| p.cpu.is_none()).unwrap();
    assert_eq!(pool.nice_granted, Some(7), "{pool:?}");
}

/// Field 19 of /proc/thread-self/stat.
fn thread_nice() -> i32 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(16).unwrap().parse().unwrap()
}

#[test]
fn bound_work_runs_on_the_cpu_it_was_queued_on() {
    let rt = Runtime::builder().build().unwrap();
    let wq = rt.workqueue("pinned").build().unwrap();
    for &cpu in rt.cpus() {
        let seen = Arc::new(AtomicUsize::new(usize::MAX));
        let s = seen.clone();
        let w = Work::new(move || s.store(unsafe_free_getcpu(), SeqCst));
        wq.queue_on(cpu, &w).unwrap();
        w.flush().unwrap();
        assert_eq!(seen.load(SeqCst), cpu);
    }
    assert!(matches!(wq.queue_on(100_000, &Work::new(|| {})), Err(Error::InvalidCpu { cpu: 100_000, .. })));
}

fn unsafe_free_getcpu() -> usize {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(36).unwrap().parse().unwrap()
}

#[test]
fn system_queues_exist_with_the_kernel_names() {
    let names = [
        (wq_core::system_wq(), "events"),
        (wq_core::system_highpri_wq(), "events_highpri"),
        (wq_core::system_long_wq(), "events_long"),
        (wq_core::system_unbound_wq(), "events_unbound"),
        (wq_core::system_freezable_wq(), "events_freezable"),
        (wq_core::system_power_efficient_wq(), "events_power_efficient"),
    ];
    for (wq, name) in names {
        assert_eq!(wq.name(), name);
        assert_eq!(wq.submit(|| 3).unwrap().wait().unwrap(), 3);
    }
    assert!(wq_core::system_highpri_wq().flags().contains(Flags::HIGHPRI));
    assert!(wq_core::system_unbound_wq().flags().contains(Flags::UNBOUND));
    assert!(Runtime::global().dump().contains("events_unbound"));
}

/// Counts how a shared item ended; panics in `run` when told to.
#[derive(Default)]
struct Counted {
    runs: AtomicUsize,
    discards: AtomicUsize,
    panic: bool,
}

impl SharedItem for Counted {
    fn run(self: Arc<Self>) {
        self.runs.fetch_add(1, SeqCst);
        assert!(!self.panic, "shared item panics");
    }

    fn discard(self: Arc<Self>) {
        self.discards.fetch_add(1, SeqCst);
    }
}

#[test]
fn a_shared_item_runs_once_per_queueing_and_a_refused_one_is_discarded() {
    let wq = Workqueue::builder("shared").build().unwrap();
    let items: Vec<Arc<Counted>> = (0..100).map(|_| Arc::new(Counted::default())).collect();
    for item in &items {
        wq.execute_shared(item.clone()).unwrap();
    }
    let panicky = Arc::new(Counted { panic: true, ..Counted::default() });
    wq.execute_shared(panicky.clone()).unwrap();
    wq.flush().unwrap();
    for item in &items {
        assert_eq!((item.runs.load(SeqCst), item.discards.load(SeqCst)), (1, 0));
        assert_eq!(Arc::strong_count(item), 1, "the queue kept a reference");
    }
    assert_eq!(panicky.runs.load(SeqCst), 1);
    let stats = wq.stats();
    assert_eq!((stats.total, stats.panics), (101, 1));

    wq.destroy().unwrap();
    let refused = Arc::new(Counted::default());
    assert!(matches!(wq.execute_shared(refused.clone()), Err(Error::Destroyed { .. })));
    assert_eq!(
        (refused.runs.load(SeqCst), refused.discards.load(SeqCst)),
        (0, 1),
        "discarded before the error returns"
    );
    assert_eq!(Arc::strong_count(&refused), 1);
}

/// A future that wakes itself and yields `yields` times, then completes;
/// it counts its polls and the polls that ran on a runtime thread, and
/// panics on its first poll when told to.
struct Yielding {
    yields: usize,
    polls: Arc<AtomicUsize>,
    on_workers: Arc<AtomicUsize>,
    panic: bool,
    /// Set when the future is dropped (a cancelled task drops it unpolled).
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

impl Future for Yielding {
    type Output = usize;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<usize> {
        assert!(!self.panic, "task panics");
        let polls = self.polls.fetch_add(1, SeqCst) + 1;
        if thread::current().name().is_some_and(|n| n.starts_with("wq/")) {
            self.on_workers.fetch_add(1, SeqCst);
        }
        if self.yields == 0 {
            return std::task::Poll::Ready(polls);
        }
        self.yields -= 1;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl Drop for Yielding {
    fn drop(&mut self) {
        self.dropped.store(true, SeqCst);
    }
}

fn yielding(yields: usize, panic: bool) -> Yielding {
    Yielding { yields, polls: Arc::default(), on_workers: Arc::default(), panic, dropped: Arc::default() }
}

/// Spawns `fut` as an async-task whose every poll is queued with `execute_runnable`.
fn spawn_polled<F>(wq: &Workqueue, fut: F) -> async_task::Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let queue = wq.clone();
    let (runnable, task) = async_task::spawn(fut, move |r| {
        let _ = queue.execute_runnable(r);
    });
    runnable.schedule();
    task
}

#[test]
fn each_poll_of_a_task_is_one_item_and_a_refused_poll_cancels_it() {
    let wq = Workqueue::builder("polls").build().unwrap();
    let fut = yielding(9, false);
    let (polls, on_workers) = (fut.polls.clone(), fut.on_workers.clone());
    assert_eq!(block_on(spawn_polled(&wq, fut)), 10);
    assert_eq!(on_workers.load(SeqCst), 10, "a poll ran outside the queue's workers");
    wq.flush().unwrap();
    assert_eq!(polls.load(SeqCst), 10);
    assert_eq!((wq.stats().total, wq.stats().panics), (10, 0), "one item per poll");

    // A panic unwinding out of a poll is the item's panic; the worker lives on.
    let _task = spawn_polled(&wq, yielding(0, true));
    wq.flush().unwrap();
    assert_eq!((wq.stats().total, wq.stats().panics), (11, 1));
    assert_eq!(block_on(spawn_polled(&wq, yielding(2, false))), 3);

    wq.destroy().unwrap();
    let fut = yielding(0, false);
    let dropped = fut.dropped.clone();
    let (runnable, task) = async_task::spawn(fut, |_| {});
    assert!(matches!(wq.execute_runnable(runnable), Err(Error::Destroyed { .. })));
    assert!(dropped.load(SeqCst), "the refused poll's future was not dropped before the error returned");
    assert_eq!(block_on(task.fallible()), None, "the refused task was not cancelled");
}

/// Entries queued behind a running worker wait in the pool's inbox until
/// that worker next locks the pool (`pool/README.md`, "The inbox"). `flush`
/// must admit them before it advances the flush colour, or they get the
/// new colour and it returns without waiting for them.
#[test]
fn flush_waits_for_items_still_in_the_inbox() {
    // No sleep detector: nothing but the worker and `flush` locks the pool.
    let rt = Runtime::builder().cpus([0]).detector(wq_core::Detector::ExplicitOnly).build().unwrap();
    let wq = rt.workqueue("inbox").build().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = release.clone();
    // The pool's one running worker stays in this item, asleep unannounced:
    // what is queued behind it stays in the inbox.
    wq.execute(move || {
        started_tx.send(()).unwrap();
        while !r.load(SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
    })
    .unwrap();
    started_rx.recv().unwrap();
    // The reserve worker the blocker's worker asked for admits the inbox
    // when it starts: let it start first.
    common::wait_until("the reserve worker idles", || rt.stats().pools.iter().any(|p| p.idle == 1));
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let ran = ran.clone();
        // Long enough that a flush woken by the blocker's end alone would
        // return while these still run.
        wq.execute(move || {
            common::burn(Duration::from_micros(400));
            ran.fetch_add(1, SeqCst);
        })
        .unwrap();
    }
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        release.store(true, SeqCst);
    });
    wq.flush().unwrap();
    assert_eq!(ran.load(SeqCst), 100, "flush returned before the items queued before it ran");
    releaser.join().unwrap();
}

/// Polling a `Completion` again after it returned `Ready` panics, as its
/// `poll` documents, rather than returning `Pending` for ever; `wait` on it
/// panics too, and it counts as finished.
#[test]
fn a_completion_polled_after_ready_panics() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Waker};
    let wq = Workqueue::builder("poll-twice").build().unwrap();
    let mut c = wq.submit(|| 1).unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Pin::new(&mut c).poll(&mut cx).is_pending() {
        assert!(Instant::now() < deadline, "the item never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(c.is_finished() && c.wait_timeout(Duration::ZERO));
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Pin::new(&mut c).poll(&mut cx)));
    assert!(again.is_err(), "polled after Ready without a panic");
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || c.wait()));
    assert!(waited.is_err(), "waited on after Ready without a panic");
}
